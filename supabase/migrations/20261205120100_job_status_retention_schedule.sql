-- Retention that runs: where pg_cron exists, a named cron job runs
-- public.job_status_retention_run() (20261205120000) every 15 minutes, in this database.
--
-- Supabase preloads pg_cron in every project (shared_preload_libraries; cron.database_name is
-- `postgres`, the project's database), and lets the migrating role create it: its
-- after-create script puts the functions and tables in schema `cron` and grants them to
-- `postgres` (Integrations -> Cron in the dashboard shows the job; cron.job_run_details
-- records each run). On another PostgreSQL the extension needs
-- `shared_preload_libraries = 'pg_cron'` and `cron.database_name = '<this database>'` in
-- postgresql.conf, and a restart. Where it cannot be had (not installed, not preloaded, or
-- preloaded for another database) this migration changes nothing and says so (NOTICE): run
-- `coursegen purge` from a scheduler instead (README, "Retention").
--
-- The job runs as the role that applied this migration (`postgres` on Supabase), which owns
-- the functions. Its name makes it idempotent: cron.schedule with a name that exists replaces
-- that job's schedule and command.
--
-- The time: every 15 minutes ('*/15 * * * *', UTC), one batch of each kind per run (5,000
-- rows by default: up to 480,000 rows a day of each). To change it, in this database:
--   select cron.schedule('job_status_retention', '17 * * * *',
--                        'select public.job_status_retention_run()');   -- hourly, at :17
-- or stop it: select cron.unschedule('job_status_retention');
-- The horizons are not here: they are the row of public.job_status_retention.

do $$
declare
  v_problem text;
begin
  if not exists (select from pg_catalog.pg_extension where extname = 'pg_cron') then
    if not exists (select from pg_catalog.pg_available_extensions where name = 'pg_cron') then
      raise notice 'job_status retention is not scheduled: pg_cron is not installed on this server; '
        'schedule `coursegen purge` instead (README, "Retention")';
      return;
    end if;
    begin
      create extension if not exists pg_cron;
    exception when others then
      -- not preloaded ("unrecognized configuration parameter cron.database_name"), or preloaded
      -- for another database ("can only create extension in database ...")
      get stacked diagnostics v_problem = message_text;
      raise notice 'job_status retention is not scheduled: cannot create extension pg_cron here (%); '
        'schedule `coursegen purge` instead (README, "Retention")', v_problem;
      return;
    end;
  end if;
  begin
    -- as text: schema `cron` does not exist where the extension is missing
    execute $sql$
      select cron.schedule(
        'job_status_retention',
        '*/15 * * * *',
        'select public.job_status_retention_run()'
      )
    $sql$;
  exception when others then
    -- say, a role that may not use schema cron
    get stacked diagnostics v_problem = message_text;
    raise notice 'job_status retention is not scheduled: cron.schedule failed (%); '
      'schedule `coursegen purge` instead (README, "Retention")', v_problem;
    return;
  end;
  raise notice 'job_status retention scheduled: pg_cron job job_status_retention, */15 * * * *';
end
$$;
