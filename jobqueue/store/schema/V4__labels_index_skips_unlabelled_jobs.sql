-- V4: the label index holds only jobs that have labels.
--
-- Every update of a job that is not a heap-only update (each change of state is not)
-- adds an entry to every index of the row, and a GIN entry is among the dearest: an
-- unlabelled job, most jobs, put one "empty" entry into jobs_labels at its insert and at
-- each of its changes of state, for a filter that can never match it. A label filter
-- names at least one label, so it only ever needs the labelled jobs; the store's filter
-- says so (labels <> '{}') to let the planner use this index.
DROP INDEX jobs_labels;
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops) WHERE labels <> '{}';
