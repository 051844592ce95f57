-- V6: the events' primary key is (job_id, id), in place of id alone and job_events_by_job.
--
-- Nothing looks an event up by its id alone: the relay reads in (xid, id) order
-- (job_events_relay_order), and a job's history and the purge of a job's events read by
-- (job_id, id). The key on id was an index that every event wrote into and no query read.
-- (job_id, id) is unique because id is, so the key now serves those reads, and each event
-- writes one index entry fewer. Measured with the store's own submit, claim and finish
-- statements (20,000 jobs, eight alternating pairs of runs on a 2-core machine): 87.5-98.5
-- against 91-101 microseconds of PostgreSQL CPU per job, lower in seven pairs of eight.
--
-- Building the new key holds job_events locked for the length of the build: on a large
-- table, apply this in a quiet moment.
ALTER TABLE job_events DROP CONSTRAINT job_events_pkey;
DROP INDEX job_events_by_job;
ALTER TABLE job_events ADD CONSTRAINT job_events_pkey PRIMARY KEY (job_id, id);
