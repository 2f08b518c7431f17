-- Realtime that scales: every change of a job_status row is broadcast to its owner's private
-- topic `user:<user_id>:jobs`, and only that user may join the topic.
--
-- Postgres Changes (the supabase_realtime publication, still on) checks RLS once per subscriber
-- for every change, on one thread; Broadcast checks the policies once, when a client joins a
-- private channel. Statement-level triggers write one message per changed row into
-- realtime.messages, one INSERT per statement (a writer's batch of 400 events is one
-- statement), each row as realtime.send writes one (supabase/realtime, commit 833cf36c3a36,
-- priv/repo/tenant_schema/realtime/functions/send.sql): a fresh id, also in the payload as `id`;
-- event, topic; private; extension 'broadcast'. Realtime's replication of realtime.messages
-- sends each row to the topic's subscribers (lib/realtime/tenants/replication_connection.ex).
-- realtime.send itself, called per row, or realtime.broadcast_changes from a row trigger (the
-- pattern Supabase documents) cost about two and three times as much (below).
--
-- A message: event `job_status`, payload
--   {"id", "operation": "INSERT" | "UPDATE" | "DELETE", "job_id", "actor_name", "status",
--    "progress", "progress_message", "attempt", "error_type", "error_message",
--    "next_retry_at", "cancel_requested_at", "updated_at", "has_result"}
-- the row after an INSERT or UPDATE, before a DELETE. Never the result: it may be 1 MB,
-- Realtime drops a message over the project's payload limit (256 KB on the free plan), and
-- realtime.messages keeps every message for three days; a browser that sees `completed` with
-- has_result reads the row once (RLS lets it). Never the owner's ids: the topic says whose.
-- Skipped: an UPDATE that changes none of these fields (a later event with the same status,
-- progress and message moves only event_at); a stale event writes no row, so sends nothing.
--
-- One topic per user, none per job: a browser watching one job filters on job_id, and one
-- message per change is half the rows, WAL and replication of two.
--
-- Harmless: without realtime.messages (PostgreSQL without Supabase or the local bootstrap)
-- the triggers do nothing. A message that cannot be stored (no partition for today, a writing
-- role that may not insert) is a warning and the status write goes on, as with realtime.send.
-- The writing role must get past the table's RLS: service_role bypasses it; a store that
-- connects as another role needs BYPASSRLS or an insert policy of its own.
--
-- Cost, backend CPU per `completed` event on pending rows, 20,000 events in batches of 400,
-- /proc/<pid>/schedstat, median of 7 shuffled rounds (benchmarks/README.md, "Broadcast from a
-- trigger"): through job_status_update 4.6 -> 13.6 us on PostgreSQL 18 (embedded), 5.0 -> 13.5
-- on 15 (Debian); through job_status_apply 8.5 -> 17.6 and 9.2 -> 17.4. realtime.send per row
-- instead: 20.7 / 21.7 us; a row trigger with realtime.broadcast_changes: 32.3 / 35.9 us.
--
-- Who may join: the policies at the end. The Realtime server checks a private channel join by
-- inserting probe rows (the channel's topic, extensions 'broadcast' and 'presence'), then, as
-- the client's role with its claims and `realtime.topic` set, selecting them back under RLS
-- (lib/realtime/tenants/authorization.ex): a visible probe admits the join. A signed-in user
-- sees the broadcast probe of their own topic only; anon nothing. Nobody but the database
-- sends on a job topic: no policy lets an API role insert there, and restrictive policies keep
-- any other policy of the project (say, "authenticated may use every topic") from opening it.

create function public.job_status_broadcast()
returns trigger
language plpgsql
security invoker
set search_path = ''
-- the UPDATE branch joins the transition tables; job_status_update turns hash joins off for
-- its own statement, and a nested loop over two 400-row tuplestores costs 160,000 comparisons
set enable_hashjoin = on
as $$
begin
  if pg_catalog.to_regclass('realtime.messages') is null then
    return null;
  end if;
  begin
    if tg_op = 'UPDATE' then
      insert into realtime.messages (id, topic, extension, event, private, payload)
      select c.id, 'user:' || c.user_id::text || ':jobs', 'broadcast', 'job_status', true,
             pg_catalog.jsonb_build_object(
               'id', c.id, 'operation', 'UPDATE', 'job_id', c.job_id,
               'actor_name', c.actor_name, 'status', c.status, 'progress', c.progress,
               'progress_message', c.progress_message, 'attempt', c.attempt,
               'error_type', c.error_type, 'error_message', c.error_message,
               'next_retry_at', c.next_retry_at, 'cancel_requested_at', c.cancel_requested_at,
               'updated_at', c.updated_at, 'has_result', c.has_result)
      from (
        select pg_catalog.gen_random_uuid() as id, n.user_id, n.job_id, n.actor_name, n.status,
               n.progress, n.progress_message, n.attempt, n.error_type, n.error_message,
               n.next_retry_at, n.cancel_requested_at, n.updated_at,
               n.result is not null as has_result
        from new_rows as n
        join old_rows as o on o.id = n.id
        -- what the message tells; an update that changes none of it sends nothing
        where (n.status, n.progress, n.progress_message, n.attempt, n.error_type,
               n.error_message, n.next_retry_at, n.cancel_requested_at, n.result is null)
          is distinct from
              (o.status, o.progress, o.progress_message, o.attempt, o.error_type,
               o.error_message, o.next_retry_at, o.cancel_requested_at, o.result is null)
      ) as c;
    elsif tg_op = 'INSERT' then
      insert into realtime.messages (id, topic, extension, event, private, payload)
      select c.id, 'user:' || c.user_id::text || ':jobs', 'broadcast', 'job_status', true,
             pg_catalog.jsonb_build_object(
               'id', c.id, 'operation', 'INSERT', 'job_id', c.job_id,
               'actor_name', c.actor_name, 'status', c.status, 'progress', c.progress,
               'progress_message', c.progress_message, 'attempt', c.attempt,
               'error_type', c.error_type, 'error_message', c.error_message,
               'next_retry_at', c.next_retry_at, 'cancel_requested_at', c.cancel_requested_at,
               'updated_at', c.updated_at, 'has_result', c.has_result)
      from (
        select pg_catalog.gen_random_uuid() as id, n.user_id, n.job_id, n.actor_name, n.status,
               n.progress, n.progress_message, n.attempt, n.error_type, n.error_message,
               n.next_retry_at, n.cancel_requested_at, n.updated_at,
               n.result is not null as has_result
        from new_rows as n
      ) as c;
    elsif tg_op = 'DELETE' then
      -- the row as it was: its last state
      insert into realtime.messages (id, topic, extension, event, private, payload)
      select c.id, 'user:' || c.user_id::text || ':jobs', 'broadcast', 'job_status', true,
             pg_catalog.jsonb_build_object(
               'id', c.id, 'operation', 'DELETE', 'job_id', c.job_id,
               'actor_name', c.actor_name, 'status', c.status, 'progress', c.progress,
               'progress_message', c.progress_message, 'attempt', c.attempt,
               'error_type', c.error_type, 'error_message', c.error_message,
               'next_retry_at', c.next_retry_at, 'cancel_requested_at', c.cancel_requested_at,
               'updated_at', c.updated_at, 'has_result', c.has_result)
      from (
        select pg_catalog.gen_random_uuid() as id, o.user_id, o.job_id, o.actor_name, o.status,
               o.progress, o.progress_message, o.attempt, o.error_type, o.error_message,
               o.next_retry_at, o.cancel_requested_at, o.updated_at,
               o.result is not null as has_result
        from old_rows as o
      ) as c;
    end if;
  exception when others then
    raise warning 'job_status_broadcast: no message sent: %', sqlerrm;
  end;
  return null;
end
$$;

revoke all on function public.job_status_broadcast() from public, anon, authenticated;

-- one trigger per operation: PostgreSQL takes transition tables only on a one-event trigger
create trigger job_status_broadcast_insert
  after insert on public.job_status
  referencing new table as new_rows
  for each statement execute function public.job_status_broadcast();
create trigger job_status_broadcast_update
  after update on public.job_status
  referencing old table as old_rows new table as new_rows
  for each statement execute function public.job_status_broadcast();
create trigger job_status_broadcast_delete
  after delete on public.job_status
  referencing old table as old_rows
  for each statement execute function public.job_status_broadcast();

-- The policies, where Realtime is (always on Supabase; locally with the bootstrap).
do $$
begin
  if pg_catalog.to_regclass('realtime.messages') is null then
    return;
  end if;

  -- a signed-in user receives the broadcasts of their own jobs' topic
  create policy job_status_topic_read_own on realtime.messages
    as permissive for select to authenticated
    using (
      extension = 'broadcast'
      and topic = 'user:' || (select auth.uid())::text || ':jobs'
    );

  -- whatever else the project allows on realtime.messages, a job topic is its owner's alone,
  -- and only the database (roles that bypass RLS) sends on it
  create policy job_status_topic_owner_only on realtime.messages
    as restrictive for select to anon, authenticated
    using (
      topic not like 'user:%:jobs'
      or topic = 'user:' || (select auth.uid())::text || ':jobs'
    );
  create policy job_status_topic_no_sends on realtime.messages
    as restrictive for insert to anon, authenticated
    with check (topic not like 'user:%:jobs');
end
$$;
