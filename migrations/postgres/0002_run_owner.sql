-- the process running a run, "host/pid": a run whose process is gone is failed at once
ALTER TABLE runs ADD COLUMN owner TEXT;
