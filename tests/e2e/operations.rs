//! Connector operations: `datarun connector status` shows position, lag, totals and the
//! last error; a bad source row is reported with its line and reason, and either set
//! aside (the default) or stops the run at it (`on_bad_row = "stop"`), never skipped
//! silently.

use crate::harness::{Broker, Db, TestEnv};
use std::path::Path;

/// Runs the CLI and returns its result instead of panicking on an error.
async fn cli(env: &TestEnv, args: &[&str]) -> Result<String, String> {
    let mut argv = vec![
        "datarun".to_owned(),
        "--config".to_owned(),
        env.config_file.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut out = Vec::new();
    match datarun_cli::cli::run(&argv, &mut out).await {
        Ok(_) => Ok(String::from_utf8(out).unwrap()),
        Err(error) => Err(format!("{error:#}")),
    }
}

fn status_line(output: &str, connector: &str) -> String {
    output
        .lines()
        .find(|line| line.starts_with(connector))
        .unwrap_or_else(|| panic!("no line for {connector}: {output}"))
        .to_owned()
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_status_and_bad_rows() {
    let env = TestEnv::new(Db::Sqlite, Broker::Mock).await;
    let hub = env.start().await;
    let folder = env
        .config
        .hub
        .connectors_dir
        .join("health.birth_certificate");
    let folder = folder.to_str().unwrap();
    let state = env.dir.join("state");
    let state = state.to_str().unwrap();
    // Distinct certificates for both connectors of this test.
    let all = datarun_connector::sample::birth_certificates(35, 5);
    let mut rows = all[..25].to_vec();
    for bad in [5, 12] {
        rows[bad].insert("birth_date".into(), "2015-02-30".into());
    }
    let source = env.dir.join("births.csv");
    datarun_connector::sample::write_csv(&source, &rows[..20]).unwrap();
    let source = source.to_str().unwrap();

    // The default: bad rows are set aside with their line and reason; the run goes on.
    let out = cli(
        &env,
        &[
            "connector",
            "run",
            folder,
            "--source",
            source,
            "--state-dir",
            state,
        ],
    )
    .await
    .unwrap();
    assert!(
        out.contains("published 18, already done 0, rejected 2"),
        "{out}"
    );
    let rejected =
        std::fs::read_to_string(Path::new(state).join("health.birth_certificate.rejected.csv"))
            .unwrap();
    let lines: Vec<&str> = rejected.lines().collect();
    assert_eq!(lines.len(), 2, "{rejected}");
    assert!(
        lines[0].starts_with("7,") && lines[0].contains("date_of_birth"),
        "{rejected}"
    );
    assert!(lines[1].starts_with("14,"), "{rejected}");
    assert_eq!(hub.wait_for_certificates(18).await, 18);

    let status = cli(
        &env,
        &[
            "connector",
            "status",
            folder,
            "--source",
            source,
            "--state-dir",
            state,
        ],
    )
    .await
    .unwrap();
    let line = status_line(&status, "health.birth_certificate");
    let fields = columns(&line);
    assert_eq!(
        &fields[1..7],
        ["csv", "20/20", "rows", "0", "18", "2"],
        "{status}"
    );
    assert!(line.ends_with(" -"), "no error: {line}");

    // The department's export grows: the status shows the lag.
    datarun_connector::sample::write_csv(Path::new(source), &rows).unwrap();
    let status = cli(
        &env,
        &[
            "connector",
            "status",
            folder,
            "--source",
            source,
            "--state-dir",
            state,
        ],
    )
    .await
    .unwrap();
    let fields = columns(&status_line(&status, "health.birth_certificate")).join(" ");
    assert!(fields.contains("csv 20/25 rows 5 18 2"), "{status}");

    // on_bad_row = "stop": the run stops at the bad row, naming it, and publishes
    // nothing from it on.
    let strict = env.dir.join("connectors/health.strict_births");
    std::fs::create_dir_all(&strict).unwrap();
    let toml = std::fs::read_to_string(Path::new(folder).join("connector.toml"))
        .unwrap()
        .replace(
            "schema = \"../../schemas/",
            &format!(
                "on_bad_row = \"stop\"\nschema = \"{}/",
                crate::harness::repo_root().join("schemas").display()
            ),
        );
    std::fs::write(strict.join("connector.toml"), toml).unwrap();
    let strict = strict.to_str().unwrap();
    let mut fresh = all[25..].to_vec();
    fresh[3].insert("birth_date".into(), "2015-02-30".into());
    let strict_source = env.dir.join("strict.csv");
    datarun_connector::sample::write_csv(&strict_source, &fresh).unwrap();
    let strict_source = strict_source.to_str().unwrap();
    let error = cli(
        &env,
        &[
            "connector",
            "run",
            strict,
            "--source",
            strict_source,
            "--state-dir",
            state,
        ],
    )
    .await
    .unwrap_err();
    assert!(
        error.contains("line 5") && error.contains("date_of_birth") && error.contains("stops here"),
        "{error}"
    );
    let status = cli(
        &env,
        &[
            "connector",
            "status",
            strict,
            "--source",
            strict_source,
            "--state-dir",
            state,
        ],
    )
    .await
    .unwrap();
    let line = status_line(&status, "health.strict_births");
    assert!(
        columns(&line).join(" ").contains("csv 3/10 rows 7 3 0"),
        "{status}"
    );
    assert!(
        line.contains("stops here"),
        "the last error is shown: {line}"
    );

    // Fixed, the run goes on from the bad row and the error is cleared.
    fresh[3] = all[28].clone();
    datarun_connector::sample::write_csv(Path::new(strict_source), &fresh).unwrap();
    let out = cli(
        &env,
        &[
            "connector",
            "run",
            strict,
            "--source",
            strict_source,
            "--state-dir",
            state,
        ],
    )
    .await
    .unwrap();
    assert!(
        out.contains("published 7, already done 3, rejected 0"),
        "{out}"
    );
    let status = cli(
        &env,
        &[
            "connector",
            "status",
            strict,
            "--source",
            strict_source,
            "--state-dir",
            state,
        ],
    )
    .await
    .unwrap();
    let line = status_line(&status, "health.strict_births");
    assert!(
        columns(&line).join(" ").contains("csv 10/10 rows 0 10 0"),
        "{status}"
    );
    assert!(line.ends_with(" -"), "{line}");
    assert_eq!(hub.wait_for_certificates(28).await, 28);
    hub.running.stop().await;
}
