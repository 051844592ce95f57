-- V5: one partial index of the attempts in flight instead of three.
--
-- jobs_leases (lease recovery, by lease_expires_at), jobs_in_flight (the concurrency cap
-- and statistics, by queue and state) and jobs_in_flight_by_worker (a worker's attempts)
-- all hold exactly the assigned and running jobs, so each claim and each start wrote an
-- entry into all three. Measured with the store's own claim and finish statements on a
-- 2-core machine, the two dropped here cost PostgreSQL about 40 % of its CPU per job
-- (125 against 75 microseconds).
--
-- What used them now scans jobs_in_flight, whose predicate implies theirs: lease
-- recovery (every few seconds) and a worker's attempts (at registration, departure and
-- status counts) read the attempts in flight, which are as many as the worker slots, not
-- as many as the jobs. And with lease_expires_at in no index, extending a lease (every
-- heartbeat, for every running job) can be a heap-only update.
DROP INDEX jobs_leases;
DROP INDEX jobs_in_flight_by_worker;
