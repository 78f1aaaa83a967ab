//! The pull side: a department entitled to a record type lands it in its own table
//! through a sink connector reading the hub's change feed; a department that is not
//! entitled is refused and audited; a sink killed mid-way resumes from its cursor with
//! nothing missing or doubled, and applies new versions.

use crate::harness::{repo_root, Broker, Db, TestEnv};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// The department's table, read back on the engine under test.
async fn target_rows(url: &str) -> Vec<(String, String, String, String)> {
    let sql = "SELECT certificate_id, record_type, record_id, fields FROM school_births ORDER BY certificate_id";
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows: Vec<(String, String, String, String)> =
            sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let rows: Vec<(String, String, String, String)> =
            sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    }
}

async fn cursor_of(url: &str) -> i64 {
    let sql = "SELECT after FROM datarun_sink_cursors WHERE sink = 'education.birth_sink'";
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let after: Option<i64> = sqlx::query_scalar(sql)
            .fetch_optional(&pool)
            .await
            .unwrap_or(None);
        pool.close().await;
        after.unwrap_or(0)
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let after: Option<i64> = sqlx::query_scalar(sql)
            .fetch_optional(&pool)
            .await
            .unwrap_or(None);
        pool.close().await;
        after.unwrap_or(0)
    }
}

async fn sink_lands_exactly_the_entitled_records(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    // Two record types on the exchange.
    let population = datarun_connector::population::generate(150, 7);
    population.write(&env.dir).unwrap();
    let mut births = 0;
    let mut total = 0;
    for record_type in [
        "health.birth_certificate",
        "public_security.residence_permit",
    ] {
        let file = population
            .files
            .iter()
            .find(|f| f.record_type == record_type)
            .unwrap();
        let folder = repo_root().join("connectors").join(record_type);
        let (code, out) = env
            .cli(&[
                "connector",
                "run",
                folder.to_str().unwrap(),
                "--source",
                env.dir.join(file.path).to_str().unwrap(),
                "--state-dir",
                env.dir.join("state").to_str().unwrap(),
            ])
            .await;
        assert_eq!(code, 0, "{out}");
        if record_type == "health.birth_certificate" {
            births = file.rows.len();
        }
        total += file.rows.len();
    }
    assert!(births > 20 && total > births, "{births} of {total}");
    assert_eq!(hub.wait_for_certificates(total as i64).await, total as i64);

    // Not entitled: refused, and the refusal is audited.
    let education = env.department_token("education").await;
    let (status, body) = hub
        .get("/v1/feed?record_types=health.birth_certificate", &education)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "not_entitled");

    let (code, out) = env
        .cli(&[
            "entitlement",
            "grant",
            "education",
            "health.birth_certificate",
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    // Entitled to births, not to residence permits: asking for both is refused whole.
    let (status, _) = hub
        .get(
            "/v1/feed?record_types=health.birth_certificate,public_security.residence_permit",
            &education,
        )
        .await;
    assert_eq!(status, 403);

    // The sink, into the department's own database.
    let target = match db {
        Db::Sqlite => format!("sqlite://{}", env.dir.join("school.db").display()),
        Db::Postgres => {
            let admin = crate::harness::postgres_admin_url();
            let name = crate::harness::unique("school");
            datarun_store::Store::create_postgres_database(&admin, &name)
                .await
                .unwrap();
            format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
        }
    };
    let folder = env.dir.join("sinks/education.birth_sink");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("token"), &education).unwrap();
    std::fs::write(
        folder.join("sink.toml"),
        format!(
            "department = \"education\"\nrecord_types = [\"health.birth_certificate\"]\nhub_url = \"{}\"\ntoken_file = \"token\"\npage_rows = 7\npoll_millis = 100\n[target]\nurl = \"{target}\"\ntable = \"school_births\"\n",
            hub.base
        ),
    )
    .unwrap();

    // Killed after its second page (the process aborts right after that page's
    // transaction committed)...
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_datarun-under-test"))
        .arg("--config")
        .arg(&env.config_file)
        .args(["connector", "run"])
        .arg(&folder)
        .env("DATARUN_FAULT_INJECT", "sink.after_apply:2")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        output.status.signal(),
        Some(6),
        "the sink aborted at its fault point: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let partial = target_rows(&target).await.len();
    assert_eq!(partial, 14, "two pages of seven applied before the crash");
    assert!(cursor_of(&target).await > 0);

    // ...and run again to the end.
    let (code, out) = env
        .cli(&["connector", "run", folder.to_str().unwrap(), "--once"])
        .await;
    assert_eq!(code, 0, "{out}");
    let rows = target_rows(&target).await;
    let ids: BTreeSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(rows.len(), births, "every birth certificate, once");
    assert_eq!(ids.len(), births);
    assert!(
        rows.iter().all(|r| r.1 == "health.birth_certificate"),
        "nothing the department is not entitled to"
    );

    // A new version reaches the table on the next run.
    let mut changed = population
        .files
        .iter()
        .find(|f| f.record_type == "health.birth_certificate")
        .unwrap()
        .rows[0]
        .clone();
    changed.insert("baby_name".into(), "陈新名".into());
    changed.insert("updated_at".into(), "2026-06-30 12:00:00".into());
    let source = env.dir.join("correction.csv");
    datarun_connector::sample::write_csv(&source, &[changed.clone()]).unwrap();
    env.run_connector(&source).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.running.store.record_counts().await.unwrap().0 < total as i64 + 1 {
        assert!(Instant::now() < deadline, "the correction was not stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out) = env
        .cli(&["connector", "run", folder.to_str().unwrap(), "--once"])
        .await;
    assert_eq!(code, 0, "{out}");
    let rows = target_rows(&target).await;
    assert_eq!(rows.len(), births);
    let row = rows.iter().find(|r| r.0 == changed["cert_no"]).unwrap();
    let fields: Value = serde_json::from_str(&row.3).unwrap();
    assert_eq!(fields["child_name"], "陈新名");

    // Every read is audited: the refusals, and one event per page read.
    let events = hub
        .running
        .store
        .audit_events(&datarun_store::AuditFilter {
            kind: Some("feed_read".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = events.iter().filter(|e| e.outcome == "refused").count();
    assert_eq!(refused, 2);
    assert!(
        events.len() > births / 7,
        "{} feed reads audited",
        events.len()
    );
    assert!(events
        .iter()
        .all(|e| e.department.as_deref() == Some("education")));
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_lands_exactly_the_entitled_records_sqlite() {
    sink_lands_exactly_the_entitled_records(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_lands_exactly_the_entitled_records_postgres() {
    sink_lands_exactly_the_entitled_records(Db::Postgres).await;
}
