use std::collections::HashSet;

use sqlx::AssertSqlSafe;
use tandem_batch::Catalog;
use tandem_batch::catalog::{Backend, Publication, RUN_LEASE, Trigger};
use tandem_batch::testing::catalog_urls;
use tandem_model::{DatasetSpec, ViewSpec};

fn dataset(name: &str) -> DatasetSpec {
    serde_json::from_str(&format!(
        r#"{{"name":"{name}","time_field":"ts","fields":{{"ts":"timestamp","c":"string"}}}}"#
    ))
    .unwrap()
}

fn view(name: &str, dataset: &str) -> ViewSpec {
    serde_json::from_str(&format!(
        r#"{{"name":"{name}","dataset":"{dataset}","granularity":"hour","dimensions":["c"],"measures":{{"n":"count"}}}}"#
    ))
    .unwrap()
}

/// Every catalog the suite runs on, each fresh, with a label for messages.
async fn catalogs() -> Vec<(Catalog, tempfile::TempDir)> {
    let mut out = Vec::new();
    for url in catalog_urls().await {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(url.as_deref(), dir.path()).await.unwrap();
        assert_eq!(catalog.backend(), if url.is_some() { Backend::Postgres } else { Backend::Sqlite });
        out.push((catalog, dir));
    }
    out
}

fn publication(run_id: i64, version: i64, watermark: u64) -> Publication {
    Publication {
        run_id,
        view: "v".into(),
        version,
        watermark,
        files: vec![format!("views/v/v{version:06}/part-00000.parquet")],
        rows_in: 10,
        rows_out: 3,
        mode: "incremental",
        partitions: vec!["2026-11-01".into()],
    }
}

#[tokio::test]
async fn datasets_and_views_are_stored_once() {
    for (catalog, dir) in catalogs().await {
        let backend = catalog.backend();
        catalog.create_dataset(&dataset("b")).await.unwrap();
        catalog.create_dataset(&dataset("a")).await.unwrap();
        assert!(catalog.create_dataset(&dataset("a")).await.is_err(), "{backend:?}: duplicate dataset");
        let names: Vec<_> = catalog.datasets().await.unwrap().into_iter().map(|d| d.spec.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(catalog.dataset("a").await.unwrap().unwrap().spec, dataset("a"));
        assert!(catalog.dataset("zz").await.unwrap().is_none());

        // a dataset that gains a field keeps its place in the column order and its compaction
        let wider = dataset("a")
            .add_fields(&[("z".to_string(), tandem_model::FieldType::Int64)].into_iter().collect())
            .unwrap();
        assert!(catalog.set_dataset_spec(&wider).await.unwrap());
        assert_eq!(catalog.dataset("a").await.unwrap().unwrap().spec, wider, "{backend:?}");
        assert_eq!(catalog.dataset("b").await.unwrap().unwrap().spec, dataset("b"), "{backend:?}: another dataset");
        assert!(!catalog.set_dataset_spec(&dataset("zz")).await.unwrap(), "{backend:?}: no such dataset");
        assert!(catalog.set_dataset_spec(&dataset("a")).await.unwrap());

        catalog.set_compacted("a", 10).await.unwrap();
        catalog.set_compacted("a", 5).await.unwrap();
        assert_eq!(catalog.dataset("a").await.unwrap().unwrap().compacted_seq, 10, "compaction never moves back");

        let created = catalog.create_view(&view("v", "a"), 7).await.unwrap();
        assert_eq!(created.start_seq, 7);
        assert!(catalog.create_view(&view("v", "a"), 0).await.is_err(), "{backend:?}: duplicate view");
        let stored = catalog.view("v").await.unwrap().unwrap();
        assert_eq!((stored.spec, stored.start_seq, stored.current_version), (view("v", "a"), 7, None));

        // a view's definition stored anew (its schedule, the part that may change), only its own
        catalog.create_view(&view("w", "a"), 0).await.unwrap();
        let mut scheduled = view("v", "a");
        scheduled.schedule = Some("*/5 * * * *".into());
        assert!(catalog.set_view_spec(&scheduled).await.unwrap());
        let stored = catalog.view("v").await.unwrap().unwrap();
        assert_eq!((&stored.spec, stored.start_seq), (&scheduled, 7), "{backend:?}");
        assert_eq!(catalog.view("w").await.unwrap().unwrap().spec, view("w", "a"), "{backend:?}: another view");
        assert!(!catalog.set_view_spec(&view("zz", "a")).await.unwrap(), "{backend:?}: no such view");
        assert!(catalog.view("zz").await.unwrap().is_none());

        // reopening the same catalog keeps everything (and migrations run again harmlessly)
        drop(catalog);
        if backend == Backend::Sqlite {
            let again = Catalog::connect(None, dir.path()).await.unwrap();
            assert_eq!(again.views().await.unwrap().len(), 2);
            assert_eq!(again.view("v").await.unwrap().unwrap().spec.schedule.as_deref(), Some("*/5 * * * *"));
        }
    }
}

#[tokio::test]
async fn a_dataset_is_deleted_only_once_no_view_reads_it() {
    for (catalog, _dir) in catalogs().await {
        let backend = catalog.backend();
        catalog.create_dataset(&dataset("d")).await.unwrap();
        catalog.create_dataset(&dataset("other")).await.unwrap();
        catalog.create_view(&view("v2", "d"), 0).await.unwrap();
        catalog.create_view(&view("v1", "d"), 0).await.unwrap();
        catalog.create_view(&view("w", "other"), 0).await.unwrap();
        match catalog.delete_dataset("d").await {
            Err(tandem_batch::Error::Conflict(m)) => assert!(m.contains("\"v1\", \"v2\""), "{backend:?}: {m}"),
            other => panic!("{backend:?}: {other:?}"),
        }
        assert!(catalog.dataset("d").await.unwrap().is_some(), "{backend:?}: refused, so kept");
        catalog.delete_view("v1").await.unwrap();
        catalog.delete_view("v2").await.unwrap();
        assert!(catalog.delete_dataset("d").await.unwrap(), "{backend:?}");
        assert!(catalog.dataset("d").await.unwrap().is_none(), "{backend:?}");
        assert!(!catalog.delete_dataset("d").await.unwrap(), "{backend:?}: already gone");
        // a view of a dataset gone meanwhile is refused by the catalog itself
        match catalog.create_view(&view("late", "d"), 0).await {
            Err(tandem_batch::Error::NotFound(m)) => assert!(m.contains("\"d\""), "{backend:?}: {m}"),
            other => panic!("{backend:?}: {other:?}"),
        }
        let names: Vec<_> = catalog.datasets().await.unwrap().into_iter().map(|d| d.spec.name).collect();
        assert_eq!(names, ["other"], "{backend:?}");
        // the name can be used again
        catalog.create_dataset(&dataset("d")).await.unwrap();
    }
}

#[tokio::test]
async fn one_active_run_per_view_even_under_concurrent_requests() {
    for (catalog, _dir) in catalogs().await {
        catalog.create_dataset(&dataset("d")).await.unwrap();
        catalog.create_view(&view("v", "d"), 0).await.unwrap();
        let attempts: Vec<_> = (0..12)
            .map(|_| {
                let c = catalog.clone();
                tokio::spawn(async move { c.queue_run("v", Trigger::Manual).await })
            })
            .collect();
        let mut created = 0;
        let mut ids = HashSet::new();
        for a in attempts {
            if let Ok((run, new)) = a.await.unwrap() {
                created += new as usize;
                ids.insert(run.id);
            }
        }
        assert_eq!(created, 1, "{:?}: exactly one run is created", catalog.backend());
        assert_eq!(ids.len(), 1, "every caller gets that run");
        let id = *ids.iter().next().unwrap();
        assert!(catalog.start_run(id).await.unwrap());
        assert!(!catalog.start_run(id).await.unwrap(), "a run starts once");
        let (again, new) = catalog.queue_run("v", Trigger::Schedule).await.unwrap();
        assert_eq!((again.id, new, again.status.as_str()), (id, false, "running"));
    }
}

#[tokio::test]
async fn publishing_is_one_transaction() {
    for (catalog, _dir) in catalogs().await {
        catalog.create_dataset(&dataset("d")).await.unwrap();
        catalog.create_view(&view("v", "d"), 0).await.unwrap();
        let (run, _) = catalog.queue_run("v", Trigger::Manual).await.unwrap();
        // a run that is not running cannot publish, and nothing of it is written
        assert!(catalog.publish(&publication(run.id, 1, 5)).await.is_err());
        assert!(catalog.version("v", 1).await.unwrap().is_none());
        assert_eq!(catalog.view("v").await.unwrap().unwrap().current_version, None);

        assert!(catalog.start_run(run.id).await.unwrap());
        catalog.publish(&publication(run.id, 1, 5)).await.unwrap();
        let v = catalog.version("v", 1).await.unwrap().unwrap();
        assert_eq!((v.watermark, v.run_id, v.rows, v.files.len()), (5, run.id, 3, 1));
        assert_eq!(catalog.view("v").await.unwrap().unwrap().current_version, Some(1));
        assert_eq!(catalog.current_versions().await.unwrap(), vec![("v".to_string(), 1)]);
        let done = catalog.run(run.id).await.unwrap().unwrap();
        assert_eq!((done.status.as_str(), done.watermark, done.version), ("succeeded", Some(5), Some(1)));
        assert_eq!(
            (done.mode.as_deref(), done.partitions),
            (Some("incremental"), Some(vec!["2026-11-01".to_string()]))
        );
        assert!(catalog.publish(&publication(run.id, 2, 9)).await.is_err(), "a finished run publishes once");

        // a second run may not reuse a version number: the whole publication rolls back
        let (run2, _) = catalog.queue_run("v", Trigger::Manual).await.unwrap();
        catalog.start_run(run2.id).await.unwrap();
        assert!(catalog.publish(&publication(run2.id, 1, 9)).await.is_err());
        assert_eq!(catalog.run(run2.id).await.unwrap().unwrap().status, "running", "the run's success rolled back");
        assert_eq!(catalog.version("v", 1).await.unwrap().unwrap().watermark, 5);
        catalog.fail_run(run2.id, "boom", Some(9)).await.unwrap();
        let failed = catalog.run(run2.id).await.unwrap().unwrap();
        assert_eq!((failed.status.as_str(), failed.error.as_deref()), ("failed", Some("boom")));

        let runs = catalog.runs_of("v", 10, None).await.unwrap();
        assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![run2.id, run.id], "newest first");

        let files = catalog.delete_view("v").await.unwrap().unwrap();
        assert_eq!(files, vec!["views/v/v000001/part-00000.parquet".to_string()]);
        assert!(catalog.view("v").await.unwrap().is_none());
        assert!(catalog.run(run.id).await.unwrap().is_none());
        assert!(catalog.delete_view("v").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_run_whose_process_died_is_failed_and_replaced() {
    for (catalog, _dir) in catalogs().await {
        catalog.create_dataset(&dataset("d")).await.unwrap();
        catalog.create_view(&view("v", "d"), 0).await.unwrap();
        let (run, _) = catalog.queue_run("v", Trigger::Manual).await.unwrap();
        catalog.start_run(run.id).await.unwrap();
        // a live lease keeps the run
        let (same, new) = catalog.queue_run("v", Trigger::Manual).await.unwrap();
        assert_eq!((same.id, new), (run.id, false));
        // age its heartbeat past the lease, as if its process had been killed
        let old = tandem_batch::catalog::now_micros() - 2 * RUN_LEASE.as_micros() as i64;
        sqlx::query(AssertSqlSafe(format!("UPDATE runs SET heartbeat_at = {old} WHERE id = {}", run.id)))
            .execute(catalog.pool())
            .await
            .unwrap();
        let (next, new) = catalog.queue_run("v", Trigger::Manual).await.unwrap();
        assert!(new && next.id != run.id);
        let dead = catalog.run(run.id).await.unwrap().unwrap();
        assert_eq!(dead.status, "failed");
        assert!(dead.error.unwrap().contains("abandoned"));
        // and its late publication is refused
        assert!(catalog.publish(&publication(run.id, 1, 5)).await.is_err());

        // a run of this host whose process is gone is failed at once, lease or not
        catalog.start_run(next.id).await.unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET owner = '{}/4000000000' WHERE id = {}",
            host.trim(),
            next.id
        )))
        .execute(catalog.pool())
        .await
        .unwrap();
        assert_eq!(catalog.fail_all_abandoned().await.unwrap(), 1);
        assert_eq!(catalog.run(next.id).await.unwrap().unwrap().status, "failed");
        // while a live one (this process) is kept
        let (mine, _) = catalog.queue_run("v", Trigger::Manual).await.unwrap();
        catalog.start_run(mine.id).await.unwrap();
        assert_eq!(catalog.fail_all_abandoned().await.unwrap(), 0);
    }
}

/// A run of `view`, queued and started; its id.
async fn started(catalog: &Catalog, view: &str) -> i64 {
    let (run, _) = catalog.queue_run(view, Trigger::Manual).await.unwrap();
    assert!(catalog.start_run(run.id).await.unwrap());
    run.id
}

#[tokio::test]
async fn the_newest_run_and_newest_ended_run_of_every_view_in_one_query() {
    for (catalog, _dir) in catalogs().await {
        let backend = catalog.backend();
        catalog.create_dataset(&dataset("d")).await.unwrap();
        for name in ["failed_last", "running_now", "queued_only", "never_run", "v"] {
            catalog.create_view(&view(name, "d"), 0).await.unwrap();
        }
        // failed_last: a success, then a failure; running_now: a success, then one still running
        let ok = started(&catalog, "failed_last").await;
        catalog.publish(&Publication { view: "failed_last".into(), ..publication(ok, 1, 5) }).await.unwrap();
        let failed = started(&catalog, "failed_last").await;
        catalog.fail_run(failed, "boom", None).await.unwrap();
        let ok_then_running = started(&catalog, "running_now").await;
        catalog
            .publish(&Publication { view: "running_now".into(), ..publication(ok_then_running, 1, 5) })
            .await
            .unwrap();
        let running = started(&catalog, "running_now").await;
        let queued = catalog.queue_run("queued_only", Trigger::Schedule).await.unwrap().0.id;
        // v: many finished runs, the newest a success
        for i in 0..5 {
            let id = started(&catalog, "v").await;
            catalog.fail_run(id, &format!("failure {i}"), None).await.unwrap();
        }
        let newest_v = started(&catalog, "v").await;
        catalog.publish(&publication(newest_v, 1, 9)).await.unwrap();

        let newest = |ended: bool| {
            let catalog = catalog.clone();
            async move {
                let mut runs: Vec<_> =
                    catalog.newest_runs(ended).await.unwrap().into_values().map(|r| (r.view, r.id, r.status)).collect();
                runs.sort();
                runs
            }
        };
        // against each view's runs, newest first, read one view at a time
        for ended in [true, false] {
            let mut expected = Vec::new();
            for view in catalog.views().await.unwrap() {
                let name = view.spec.name;
                let runs = catalog.runs_of(&name, 100, None).await.unwrap();
                if let Some(run) = runs.into_iter().find(|r| !ended || r.finished_at.is_some()) {
                    expected.push((name, run.id, run.status));
                }
            }
            expected.sort();
            assert_eq!(newest(ended).await, expected, "{backend:?}, ended: {ended}");
        }
        let named = |runs: &[(&str, i64, &str)]| -> Vec<(String, i64, String)> {
            runs.iter().map(|(v, id, s)| (v.to_string(), *id, s.to_string())).collect()
        };
        assert_eq!(
            newest(true).await,
            named(&[
                ("failed_last", failed, "failed"),
                ("running_now", ok_then_running, "succeeded"),
                ("v", newest_v, "succeeded")
            ]),
            "{backend:?}"
        );
        assert_eq!(
            newest(false).await,
            named(&[
                ("failed_last", failed, "failed"),
                ("queued_only", queued, "queued"),
                ("running_now", running, "running"),
                ("v", newest_v, "succeeded")
            ]),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn served_watermarks_are_those_of_each_views_current_version() {
    for (catalog, _dir) in catalogs().await {
        let backend = catalog.backend();
        catalog.create_dataset(&dataset("d")).await.unwrap();
        catalog.create_dataset(&dataset("other")).await.unwrap();
        catalog.create_view(&view("v", "d"), 0).await.unwrap();
        catalog.create_view(&view("w", "d"), 0).await.unwrap();
        catalog.create_view(&view("elsewhere", "other"), 0).await.unwrap();
        let sorted = |mut w: Vec<Option<u64>>| {
            w.sort();
            w
        };
        assert_eq!(catalog.served_watermarks("d").await.unwrap(), [None, None], "{backend:?}");
        assert!(catalog.served_watermarks("no_such_dataset").await.unwrap().is_empty());
        // v's versions 1 and 2: the current one counts
        for (version, watermark) in [(1, 5), (2, 9)] {
            let run = started(&catalog, "v").await;
            catalog.publish(&publication(run, version, watermark)).await.unwrap();
        }
        assert_eq!(sorted(catalog.served_watermarks("d").await.unwrap()), [None, Some(9)], "{backend:?}");
        let run = started(&catalog, "w").await;
        catalog.publish(&Publication { view: "w".into(), ..publication(run, 1, 7) }).await.unwrap();
        assert_eq!(sorted(catalog.served_watermarks("d").await.unwrap()), [Some(7), Some(9)], "{backend:?}");
        assert_eq!(catalog.served_watermarks("other").await.unwrap(), [None], "{backend:?}");
    }
}

#[tokio::test]
async fn issued_keys_are_stored_by_name_with_their_secrets_hash() {
    use tandem_batch::catalog::KeyRecord;
    for url in catalog_urls().await {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(url.as_deref(), dir.path()).await.unwrap();
        let backend = catalog.backend();
        let key = |name: &str, scope: &str, datasets: Option<Vec<String>>, hash: &str| KeyRecord {
            name: name.into(),
            scope: scope.into(),
            datasets,
            secret_sha256: hash.into(),
            created_at: 1_000 + name.len() as i64,
        };
        let dash = key("dash", "read", Some(vec!["a".into(), "b".into()]), "h1");
        let admin = key("admin2", "all", None, "h2");
        catalog.create_key(&dash).await.unwrap();
        catalog.create_key(&admin).await.unwrap();
        // a taken name, a taken secret, an unknown scope: refused, nothing stored
        for bad in [key("dash", "all", None, "h3"), key("other", "all", None, "h1"), key("x", "write", None, "h4")] {
            assert!(catalog.create_key(&bad).await.is_err(), "{backend:?}: {bad:?}");
        }
        assert_eq!(catalog.keys().await.unwrap(), [admin.clone(), dash.clone()], "{backend:?}");
        // kept across a reconnect, then deleted once
        drop(catalog);
        let catalog = Catalog::connect(url.as_deref(), dir.path()).await.unwrap();
        assert_eq!(catalog.keys().await.unwrap(), [admin.clone(), dash], "{backend:?}: after a reconnect");
        assert!(catalog.delete_key("dash").await.unwrap());
        assert!(!catalog.delete_key("dash").await.unwrap(), "{backend:?}: deleted twice");
        assert_eq!(catalog.keys().await.unwrap(), [admin], "{backend:?}");
    }
}
