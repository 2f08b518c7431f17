-- public.job_status_update: the write path for events of jobs that already have a row.
--
-- Nearly every status write is an update: the producer's `pending` event creates the row, and the
-- worker's events (active, progress, retrying, the final status) update it. job_status_upsert
-- pays for an insert each time (`INSERT ... ON CONFLICT DO UPDATE` parses the event's JSON, builds
-- the whole insert tuple, finds the conflict, locks the row and only then updates it). This
-- function takes the events as typed arrays, one element per event, and only updates: about half
-- the backend CPU per event (benchmarks/README.md, "An update path for existing rows"). A null
-- array stands for a field no event has (unnest pads it with nulls).
--
-- Same transition rule as job_status_upsert (the two are tested against each other on random
-- event histories: tests/integration/test_update_path.py), applied to the rows that exist; the
-- events of one job fold into the one that wins, as there. It never inserts: it returns the job
-- ids whose rows it did not write (usually none), and the caller sends their events, with any
-- event it wants checked in full, through job_status_apply, which decides and reports on each (a
-- job without a row yet is inserted there, a stale event reported stale). The owner, actor and
-- queue of a row never change after its insert, so they are not parameters. Rows are locked in
-- job_id order, the order job_status_upsert takes them in.

create function public.job_status_update(
  job_ids text[], statuses public.job_state[], attempts integer[], progresses smallint[],
  progress_messages text[], results text[], error_types text[], error_messages text[],
  next_retry_ats double precision[], enqueued_ats double precision[],
  started_ats double precision[], event_ats double precision[]
)
returns text[]
language sql
security invoker
set search_path = ''
-- one plan shape whatever the table's size: the events drive a nested loop over the job_id
-- index, in job_id order (a hash join would lock rows in the table's physical order)
set enable_hashjoin = off
set enable_mergejoin = off
as $$
  with winners as materialized (
    select distinct on (e.job_id)
      e.job_id, e.status, e.attempt, e.progress_message, e.error_type, e.error_message,
      e.next_retry_at, e.enqueued_at, e.started_at,
      e.status >= 'cancelled'::public.job_state as terminal,
      -- the values job_status_upsert writes and compares
      (case when e.status = 'completed' then 100 else coalesce(e.progress, 0) end)::smallint as progress,
      nullif(e.result::jsonb, 'null'::jsonb) as result,
      pg_catalog.to_timestamp(e.event_at) as event_at
    -- the form of unnest that zips arrays is only known unqualified
    from unnest(
      job_ids, statuses, attempts, progresses, progress_messages, results, error_types,
      error_messages, next_retry_ats, enqueued_ats, started_ats, event_ats
    ) as e (
      job_id, status, attempt, progress, progress_message, result, error_type,
      error_message, next_retry_at, enqueued_at, started_at, event_at
    )
    order by e.job_id,
      (e.status >= 'cancelled'::public.job_state) desc,
      case when e.status >= 'cancelled'::public.job_state then e.event_at end asc,
      case when e.status >= 'cancelled'::public.job_state then e.status end asc,
      e.attempt desc, e.status desc, coalesce(e.progress, 0) desc, e.event_at desc
  ),
  updated as (
    update public.job_status as j set
      status = w.status,
      progress = w.progress,
      progress_message = w.progress_message,
      attempt = w.attempt,
      result = w.result,
      error_type = w.error_type,
      error_message = w.error_message,
      next_retry_at = pg_catalog.to_timestamp(w.next_retry_at),
      enqueued_at = coalesce(pg_catalog.to_timestamp(w.enqueued_at), j.enqueued_at),
      started_at = pg_catalog.to_timestamp(w.started_at),
      finished_at = case when w.terminal then w.event_at end,
      event_at = w.event_at,
      updated_at = pg_catalog.now()
    from winners as w
    where j.job_id = w.job_id
      and case
        when j.status >= 'cancelled' then
          w.terminal and (w.event_at, w.status) < (j.event_at, j.status)
        when w.terminal then true
        else (w.attempt, w.status, w.progress, w.event_at) > (j.attempt, j.status, j.progress, j.event_at)
      end
    returning j.job_id
  )
  -- the jobs not written; the usual answer, none, without comparing the two lists
  select case
    when (select count(*) from updated) = (select count(*) from winners) then '{}'::text[]
    else array(select w.job_id from winners as w except select u.job_id from updated as u)
  end
$$;

revoke all on function public.job_status_update(
  text[], public.job_state[], integer[], smallint[], text[], text[], text[], text[],
  double precision[], double precision[], double precision[], double precision[]
) from public, anon, authenticated;
grant execute on function public.job_status_update(
  text[], public.job_state[], integer[], smallint[], text[], text[], text[], text[],
  double precision[], double precision[], double precision[], double precision[]
) to service_role;

comment on table public.job_status is
  'One row per Dramatiq message (job_id = message_id). Written only by public.job_status_apply '
  'and public.job_status_update.';
