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
