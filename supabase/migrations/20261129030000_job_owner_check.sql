-- public.job_owner_problem(tenant_id, user_id): what is wrong with a job's owner, or null.
--
-- A job whose tenant or user does not exist can never get a row (its events are rejected by the
-- foreign keys), so producers that can reach the database ask before they send and refuse such a
-- job with a clear error (coursegen.jobs.submit). Returns 'unknown_tenant', 'unknown_user' or
-- null. Security definer because auth.users belongs to Supabase Auth and the API roles cannot read
-- it; it reveals one bit per id and is granted to service_role only.
create function public.job_owner_problem(tenant_id uuid, user_id uuid)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select case
    when not exists (
      select 1 from public.organizations as o where o.id = job_owner_problem.tenant_id
    ) then 'unknown_tenant'
    when not exists (
      select 1 from auth.users as u where u.id = job_owner_problem.user_id
    ) then 'unknown_user'
  end
$$;

revoke all on function public.job_owner_problem(uuid, uuid) from public, anon, authenticated;
grant execute on function public.job_owner_problem(uuid, uuid) to service_role;
