-- Local Supabase base: what a hosted Supabase project already has, for plain PostgreSQL
-- (the embedded server of `make demo`, test databases, a developer's own server).
--
-- NEVER apply this to a real Supabase project. `coursegen migrate` applies it only when the
-- `auth` schema is missing, which is never the case on Supabase.
--
-- Idempotent: every statement checks before it creates.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    -- PostgREST logs in as authenticator and switches to the role named in the JWT.
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

-- The timeouts a Supabase project's API roles carry (a hosted project's `pg_roles.rolconfig`;
-- https://supabase.com/docs/guides/database/postgres/timeouts). PostgreSQL applies
-- authenticator's when PostgREST logs in; PostgREST applies the switched-to role's in each
-- request's transaction. service_role sets none: it runs under authenticator's 8 s.
alter role authenticator set statement_timeout = '8s';
alter role authenticator set lock_timeout = '8s';
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;

-- As on Supabase, whatever the migrating role creates in public is granted to the API roles by
-- default: a migration must revoke what it does not mean to expose (tests/integration/test_access.py
-- lists what is left).
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

create table if not exists auth.users (
  id uuid primary key,
  email text unique,
  created_at timestamptz not null default now()
);
alter table auth.users enable row level security;
revoke all on auth.users from public, anon, authenticated;
grant all on auth.users to service_role;

-- The claims PostgREST puts in `request.jwt.claims` for the duration of a request.
create or replace function auth.jwt() returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(nullif(pg_catalog.current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;

create or replace function auth.uid() returns uuid
language sql stable
set search_path = ''
as $$
  select nullif(
    coalesce(
      nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
      auth.jwt() ->> 'sub'
    ),
    ''
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
set search_path = ''
as $$
  select coalesce(
    nullif(pg_catalog.current_setting('request.jwt.claim.role', true), ''),
    auth.jwt() ->> 'role'
  )
$$;

grant execute on function auth.jwt(), auth.uid(), auth.role() to anon, authenticated, service_role;

-- Supabase Realtime reads this publication; migrations add their tables to it when it exists.
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;


-- ---------------------------------------------------------------------------------------------
-- Supabase Realtime: just enough of its `realtime` schema for Broadcast from the database and
-- its authorization (the RLS policies on realtime.messages) to be tested here. No Realtime
-- server runs here: nothing reads the messages, nothing drops old partitions.
--
-- Copied from Supabase's own definitions, supabase/realtime at commit
-- 833cf36c3a3603fff5ae5a8a0ce473a21d5fedd4, priv/repo/tenant_schema/realtime/ (the schema its
-- tenant migrations in lib/realtime/tenants/repo/migrations/ produce, exported by the project):
--   schema.sql, tables/messages.sql, functions/topic.sql, functions/send.sql,
--   functions/broadcast_changes.sql; owners and roles as in priv/repo/tenant_db_dump_15.sql.
-- Left out: Postgres Changes (realtime.subscription, apply_rls, ...), send_binary, and the
-- publication supabase_realtime_messages_publication that the server creates for itself.
-- ---------------------------------------------------------------------------------------------

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'supabase_realtime_admin') then
    create role supabase_realtime_admin nologin noinherit;
  end if;
end
$$;

create schema if not exists realtime;
grant usage on schema realtime to anon, authenticated, service_role;
grant create, usage on schema realtime to supabase_realtime_admin with grant option;

-- tables/messages.sql: one row per Broadcast message (and per authorization probe, rolled
-- back). Partitioned by day of inserted_at; an insert with no partition for its day fails.
create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp without time zone not null default now(),
  inserted_at timestamp without time zone not null default now(),
  id uuid not null default gen_random_uuid(),
  binary_payload bytea,
  constraint messages_pkey primary key (id, inserted_at)
) partition by range (inserted_at);

do $$
begin
  if not exists (
    select 1 from pg_constraint
    where conrelid = 'realtime.messages'::regclass and conname = 'messages_payload_exclusive'
  ) then
    alter table realtime.messages add constraint messages_payload_exclusive
      check ((payload is null) or (binary_payload is null)) not valid;
  end if;
end
$$;

-- the dump shows it `on only` the parent plus one index per partition, which pg_dump attaches;
-- created on the whole table, as migration 20250905041441 does
create index if not exists messages_inserted_at_topic_index on realtime.messages
  using btree (inserted_at desc, topic)
  where ((extension = 'broadcast'::text) and (private is true));

alter table realtime.messages enable row level security;
alter table realtime.messages owner to supabase_realtime_admin;
grant insert, select, update on table realtime.messages to anon, authenticated, service_role;

-- The partitions the Realtime server creates when it connects to a project: yesterday to three
-- days ahead, UTC (Realtime.Tenants.create_messages_partitions, lib/realtime/tenants.ex). A
-- database older than that has none for today: realtime.send then drops its message with a
-- warning, as on Supabase when the server has not run.
do $$
declare
  day date;
begin
  for day in
    select d::date
    from generate_series(
      (now() at time zone 'utc')::date - 1, (now() at time zone 'utc')::date + 3, interval '1 day'
    ) as d
  loop
    execute format(
      'create table if not exists realtime.%I partition of realtime.messages for values from (%L) to (%L)',
      'messages_' || to_char(day, 'YYYY_MM_DD'), day, day + 1
    );
    execute format('alter table realtime.%I owner to supabase_realtime_admin', 'messages_' || to_char(day, 'YYYY_MM_DD'));
  end loop;
end
$$;

-- functions/topic.sql: the topic of the channel being joined, which the Realtime server sets
-- (`set_config('realtime.topic', ...)`) before it checks the policies.
create or replace function realtime.topic()
  returns text
  language sql
  stable
  as $function$
select nullif(current_setting('realtime.topic', true), '')::text;
$function$;

-- functions/send.sql: one Broadcast message; never fails its caller (a warning instead).
create or replace function realtime.send (
  payload jsonb,
  event   text,
  topic   text,
  private boolean default true
)
  returns void
  language plpgsql
  as $function$
DECLARE
  generated_id uuid;
  final_payload jsonb;
BEGIN
  BEGIN
    generated_id := gen_random_uuid();

    -- Check if payload has an 'id' key, if not, add the generated UUID
    IF payload ? 'id' THEN
      final_payload := payload;
    ELSE
      final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    END IF;

    -- Set the topic configuration
    EXECUTE format('SET LOCAL realtime.topic TO %L', topic);

    INSERT INTO realtime.messages (id, payload, event, topic, private, extension)
    VALUES (generated_id, final_payload, event, topic, private, 'broadcast');
  EXCEPTION
    WHEN OTHERS THEN
      RAISE WARNING 'WarnSendingBroadcastMessage: %', SQLERRM;
  END;
END;
$function$;

-- functions/broadcast_changes.sql: a row trigger's change as one Broadcast message.
create or replace function realtime.broadcast_changes (
  topic_name   text,
  event_name   text,
  operation    text,
  table_name   text,
  table_schema text,
  new          record,
  old          record,
  level        text   default 'ROW'::text
)
  returns void
  language plpgsql
  as $function$
DECLARE
    -- Declare a variable to hold the JSONB representation of the row
    row_data jsonb := '{}'::jsonb;
BEGIN
    IF level = 'STATEMENT' THEN
        RAISE EXCEPTION 'function can only be triggered for each row, not for each statement';
    END IF;
    -- Check the operation type and handle accordingly
    IF operation = 'INSERT' OR operation = 'UPDATE' OR operation = 'DELETE' THEN
        row_data := jsonb_build_object('old_record', OLD, 'record', NEW, 'operation', operation, 'table', table_name, 'schema', table_schema);
        PERFORM realtime.send (row_data, event_name, topic_name);
    ELSE
        RAISE EXCEPTION 'Unexpected operation type: %', operation;
    END IF;
EXCEPTION
    WHEN OTHERS THEN
        RAISE EXCEPTION 'Failed to process the row: %', SQLERRM;
END;

$function$;

alter function realtime.topic() owner to supabase_realtime_admin;
alter function realtime.send(jsonb, text, text, boolean) owner to supabase_realtime_admin;
alter function realtime.broadcast_changes(text, text, text, text, text, record, record, text)
  owner to supabase_realtime_admin;
