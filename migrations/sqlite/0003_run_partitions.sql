-- how a run recomputed its view: 'full' or 'incremental', and the event days (JSON array) it recomputed
ALTER TABLE runs ADD COLUMN mode TEXT;
ALTER TABLE runs ADD COLUMN partitions TEXT;
