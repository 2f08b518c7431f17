-- public.cancel_job(job_id): a signed-in user cancels their own job, from the browser
-- (`supabase.rpc('cancel_job', { job_id })`); the service role cancels any job.
--
-- Returns the job's status when asked (null when the caller has no such job: another user's job
-- and an unknown one give the same answer). A live job (pending, active, retrying) gets its
-- cancel_requested_at stamped, once; a finished one is left alone. The workers honour the stamp
-- within about two seconds, whoever made it (this function, job_status_request_cancel, a plain
-- `update public.job_status set cancel_requested_at = now() ...`): the fleet's cancel poller
-- copies new stamps into the Redis flags every worker reads (middleware/cancel_poll.py).
--
-- Security definer, stated here as the exception it is: signed-in users may not write
-- job_status (no grant, no policy), and this function writes one column of one row of theirs
-- and nothing else. It runs as its owner, so it decides who the caller is itself:
--   * the role the request runs as is SET ROLE's (PostgREST switches to the JWT's role that
--     way; `current_setting('role')` keeps it inside a security definer function), else the
--     login role; a member of service_role may cancel any job (so may a superuser);
--   * anyone else only a job whose user_id is auth.uid() (the JWT's `sub`): nothing without it.
-- anon may not execute it.

create function public.cancel_job(job_id text)
returns public.job_state
language sql
volatile
security definer
set search_path = ''
as $$
  with caller as (
    select
      pg_catalog.pg_has_role(
        coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user::text)::name,
        'service_role',
        'member'
      ) as privileged,
      auth.uid() as user_id
  ),
  target as (
    select j.id, j.status, j.cancel_requested_at
    from public.job_status as j, caller as c
    where j.job_id = cancel_job.job_id
      and (c.privileged or j.user_id = c.user_id)
    for update of j
  ),
  stamp as (
    update public.job_status as j
    set cancel_requested_at = pg_catalog.now(), updated_at = pg_catalog.now()
    from target as t
    where j.id = t.id
      and t.status < 'cancelled'::public.job_state  -- live: pending, active or retrying
      and t.cancel_requested_at is null
  )
  select t.status from target as t
$$;

revoke all on function public.cancel_job(text) from public, anon, authenticated;
grant execute on function public.cancel_job(text) to authenticated, service_role;
