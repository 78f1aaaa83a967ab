//! The schema registry's REST API (Confluent's dialect under `/registry`), on SQLite and
//! PostgreSQL: subjects are record types' topics, ids are global, compatibility is
//! enforced per mode and explained by field path, deletion is soft and refused for a
//! version stored records were written with, writes are the operator's and audited.

use crate::harness::{repo_root, Broker, Db, TestEnv, TestHub};
use serde_json::{json, Value};

async fn send(
    hub: &TestHub,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = hub
        .http
        .request(method, format!("{}/registry{path}", hub.base))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        content_type, "application/vnd.schemaregistry.v1+json",
        "{path}"
    );
    (status, response.json().await.unwrap_or(Value::Null))
}

fn expect_error(reply: (u16, Value), status: u16, code: u64, fragment: &str) {
    let (got, body) = reply;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(fragment),
        "{message:?} should mention {fragment:?}"
    );
}

/// The birth certificate's subject in `env`'s registry, and its shipped version 1.
fn birth_certificate_subject(env: &TestEnv) -> (String, Value) {
    let subject = format!(
        "{}-value",
        env.kafka().records_topic("health.birth_certificate")
    );
    let file =
        std::fs::read_to_string(repo_root().join("schemas/health/birth_certificate.v1.avsc"))
            .unwrap();
    (subject, serde_json::from_str(&file).unwrap())
}

/// The birth certificate schema with one more field.
fn with_field(base: &Value, field: Value) -> String {
    let mut schema = base.clone();
    schema["fields"].as_array_mut().unwrap().push(field);
    schema.to_string()
}

async fn registry_api(db: Db) {
    use reqwest::Method;
    let env = TestEnv::first_versions(db, Broker::Mock).await;
    let hub = env.start().await;
    let operator = env
        .token(&["--role", "operator", "--name", "registry admin"])
        .await;
    let department = env.department_token("health").await;
    let citizen = env.citizen_token("440104198503125841").await;
    let auditor = env.auditor_token().await;
    let (subject, v1) = birth_certificate_subject(&env);
    let file =
        std::fs::read_to_string(repo_root().join("schemas/health/birth_certificate.v1.avsc"))
            .unwrap();

    // Reads: the subject `datarun up` registered, by subject, version and id.
    let (status, subjects) = send(&hub, Method::GET, "/subjects", &department, None).await;
    assert_eq!(status, 200);
    assert!(
        subjects.as_array().unwrap().contains(&json!(subject)),
        "{subjects}"
    );
    let (_, versions) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{subject}/versions"),
        &department,
        None,
    )
    .await;
    assert_eq!(versions, json!([1]));
    let (status, latest) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{subject}/versions/latest"),
        &department,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(latest["subject"], json!(subject));
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["schema"], json!(file));
    let id1 = latest["id"].as_i64().unwrap();
    let (_, by_id) = send(
        &hub,
        Method::GET,
        &format!("/schemas/ids/{id1}"),
        &department,
        None,
    )
    .await;
    assert_eq!(by_id["schema"], json!(file));
    let (_, raw) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{subject}/versions/1/schema"),
        &department,
        None,
    )
    .await;
    assert_eq!(raw, v1);

    // A compatible version gets a new global id; registering it again changes nothing.
    let v2 = with_field(
        &v1,
        json!({"name": "remarks", "type": ["null", "string"], "default": null}),
    );
    let (status, added) = send(
        &hub,
        Method::POST,
        &format!("/subjects/{subject}/versions"),
        &operator,
        Some(json!({"schema": v2})),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["version"], 2);
    let id2 = added["id"].as_i64().unwrap();
    assert_ne!(id1, id2);
    let (_, again) = send(
        &hub,
        Method::POST,
        &format!("/subjects/{subject}/versions"),
        &operator,
        Some(json!({"schema": v2, "schemaType": "AVRO"})),
    )
    .await;
    assert_eq!(again, json!({"id": id2, "version": 2}));
    let (_, found) = send(
        &hub,
        Method::POST,
        &format!("/subjects/{subject}"),
        &department,
        Some(json!({"schema": v2})),
    )
    .await;
    assert_eq!(
        (found["version"].clone(), found["id"].clone()),
        (json!(2), json!(id2))
    );
    expect_error(
        send(&hub, Method::POST, &format!("/subjects/{subject}"), &department, Some(json!({"schema": with_field(&v1, json!({"name": "x", "type": "int", "default": 0}))}))).await,
        404, 40403, "Schema not found",
    );
    let (_, ids) = send(
        &hub,
        Method::GET,
        &format!("/schemas/ids/{id2}/versions"),
        &department,
        None,
    )
    .await;
    assert_eq!(ids, json!([{"subject": subject, "version": 2}]));

    // An incompatible version is refused (BACKWARD, the default), naming the field.
    let v3 = with_field(&v1, json!({"name": "registry_office", "type": "string"}));
    expect_error(
        send(
            &hub,
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            &operator,
            Some(json!({"schema": v3})),
        )
        .await,
        409,
        409,
        "registry_office",
    );
    let (status, verdict) = send(
        &hub,
        Method::POST,
        &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
        &department,
        Some(json!({"schema": v3})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(verdict["is_compatible"], false);
    let messages = verdict["messages"].to_string();
    assert!(
        messages.contains("READER_FIELD_MISSING_DEFAULT_VALUE")
            && messages.contains("registry_office"),
        "{messages}"
    );
    let (_, verdict) = send(
        &hub,
        Method::POST,
        &format!("/compatibility/subjects/{subject}/versions/1"),
        &department,
        Some(json!({"schema": v2})),
    )
    .await;
    assert_eq!(verdict, json!({"is_compatible": true}));

    // Per-subject configuration: NONE lets it through; the global level is untouched.
    expect_error(
        send(
            &hub,
            Method::PUT,
            &format!("/config/{subject}"),
            &operator,
            Some(json!({"compatibility": "SOMETIMES"})),
        )
        .await,
        422,
        42203,
        "BACKWARD_TRANSITIVE",
    );
    expect_error(
        send(
            &hub,
            Method::GET,
            &format!("/config/{subject}"),
            &department,
            None,
        )
        .await,
        404,
        40408,
        "subject-level compatibility",
    );
    let (_, set) = send(
        &hub,
        Method::PUT,
        &format!("/config/{subject}"),
        &operator,
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(set, json!({"compatibility": "NONE"}));
    let (_, level) = send(
        &hub,
        Method::GET,
        &format!("/config/{subject}"),
        &department,
        None,
    )
    .await;
    assert_eq!(level, json!({"compatibilityLevel": "NONE"}));
    let (_, global) = send(&hub, Method::GET, "/config", &department, None).await;
    assert_eq!(global, json!({"compatibilityLevel": "BACKWARD"}));
    let (status, added) = send(
        &hub,
        Method::POST,
        &format!("/subjects/{subject}/versions"),
        &operator,
        Some(json!({"schema": v3})),
    )
    .await;
    assert_eq!(
        (status, added["version"].clone()),
        (200, json!(3)),
        "{added}"
    );
    let id3 = added["id"].as_i64().unwrap();
    let (_, removed) = send(
        &hub,
        Method::DELETE,
        &format!("/config/{subject}"),
        &operator,
        None,
    )
    .await;
    assert_eq!(removed, json!({"compatibilityLevel": "NONE"}));
    let (_, mode) = send(&hub, Method::GET, "/mode", &department, None).await;
    assert_eq!(mode, json!({"mode": "READWRITE"}));

    // Soft deletion: hidden from listings, still resolvable by id; refused for a version
    // stored records were written with, and never permanent.
    let (_, deleted) = send(
        &hub,
        Method::DELETE,
        &format!("/subjects/{subject}/versions/3"),
        &operator,
        None,
    )
    .await;
    assert_eq!(deleted, json!(3));
    let (_, versions) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{subject}/versions"),
        &department,
        None,
    )
    .await;
    assert_eq!(versions, json!([1, 2]));
    let (_, versions) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{subject}/versions?deleted=true"),
        &department,
        None,
    )
    .await;
    assert_eq!(versions, json!([1, 2, 3]));
    let (status, _) = send(
        &hub,
        Method::GET,
        &format!("/schemas/ids/{id3}"),
        &department,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (source, _) = env.sample(3);
    env.run_connector(&source).await;
    assert_eq!(hub.wait_for_certificates(3).await, 3);
    expect_error(
        send(
            &hub,
            Method::DELETE,
            &format!("/subjects/{subject}/versions/1"),
            &operator,
            None,
        )
        .await,
        422,
        42205,
        "3 stored records",
    );
    expect_error(
        send(
            &hub,
            Method::DELETE,
            &format!("/subjects/{subject}"),
            &operator,
            None,
        )
        .await,
        422,
        42205,
        "stored records",
    );
    expect_error(
        send(
            &hub,
            Method::DELETE,
            &format!("/subjects/{subject}/versions/2?permanent=true"),
            &operator,
            None,
        )
        .await,
        422,
        42205,
        "never deletes a schema permanently",
    );
    let (_, versions) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{subject}/versions"),
        &department,
        None,
    )
    .await;
    assert_eq!(
        versions,
        json!([1, 2]),
        "a refused subject deletion deletes nothing"
    );

    // Specific errors for bad input.
    expect_error(
        send(
            &hub,
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            &operator,
            Some(json!({"schema": "{\"type\": \"record\""})),
        )
        .await,
        422,
        42201,
        "Invalid schema",
    );
    expect_error(
        send(&hub, Method::POST, &format!("/subjects/{subject}/versions"), &operator, Some(json!({"schema": "{\"type\": \"record\", \"name\": \"R\", \"fields\": [{\"name\": \"a\", \"type\": \"string\"}]}"}))).await,
        422, 42201, "datarun.role",
    );
    expect_error(
        send(
            &hub,
            Method::POST,
            "/subjects/orders-value/versions",
            &operator,
            Some(json!({"schema": v2})),
        )
        .await,
        422,
        42205,
        "not a record type's subject",
    );
    expect_error(
        send(
            &hub,
            Method::GET,
            "/subjects/orders-value/versions",
            &department,
            None,
        )
        .await,
        404,
        40401,
        "not found",
    );
    let (status, body) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{}-value/versions", "x".repeat(5000)),
        &department,
        None,
    )
    .await;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40401)));
    assert!(
        body["message"].as_str().unwrap().len() < 300,
        "an error quotes at most 200 characters of a subject: {body}"
    );
    expect_error(
        send(
            &hub,
            Method::GET,
            &format!("/subjects/{subject}/versions/9"),
            &department,
            None,
        )
        .await,
        404,
        40402,
        "Version 9",
    );
    expect_error(
        send(
            &hub,
            Method::GET,
            &format!("/subjects/{subject}/versions/abc"),
            &department,
            None,
        )
        .await,
        422,
        42202,
        "not a valid version",
    );
    expect_error(
        send(&hub, Method::GET, "/schemas/ids/99999", &department, None).await,
        404,
        40403,
        "not found",
    );

    // Roles: departments read, only operators write, citizens neither.
    expect_error(
        send(
            &hub,
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            &department,
            Some(json!({"schema": v2})),
        )
        .await,
        403,
        40301,
        "operator",
    );
    expect_error(
        send(&hub, Method::GET, "/subjects", &citizen, None).await,
        403,
        40301,
        "citizen",
    );
    expect_error(
        send(&hub, Method::GET, "/subjects", "not-a-token", None).await,
        401,
        40101,
        "token",
    );

    // Every change is in the audit log, attributed.
    let (_, events) = hub
        .get("/v1/audit/events?kind=schema_registered", &auditor)
        .await;
    let registered: Vec<&Value> = events["events"].as_array().unwrap().iter().collect();
    let versions: Vec<i64> = registered
        .iter()
        .filter(|e| e["detail"]["record_type"] == "health.birth_certificate")
        .map(|e| e["detail"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3], "{events}");
    for kind in [
        "schema_deleted",
        "schema_compatibility_set",
        "schema_compatibility_removed",
    ] {
        let (_, events) = hub
            .get(&format!("/v1/audit/events?kind={kind}"), &auditor)
            .await;
        assert_eq!(
            events["events"].as_array().unwrap().len(),
            1,
            "{kind}: {events}"
        );
    }
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_api_sqlite() {
    registry_api(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_api_postgres() {
    registry_api(Db::Postgres).await;
}

/// Confluent's own Python `SchemaRegistryClient`, unmodified, against the hub: it lists
/// subjects, reads the latest version, registers a compatible version (the same id
/// again on a repeat), reads it back by id, finds it under the subject, and gets 409
/// with the field's path for an incompatible one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_schema_registry_client_works_against_the_hub() {
    let env = TestEnv::first_versions(Db::Sqlite, Broker::Mock).await;
    let hub = env.start().await;
    let operator = env
        .token(&["--role", "operator", "--name", "registry admin"])
        .await;
    let (subject, v1) = birth_certificate_subject(&env);
    let job = json!({
        "url": format!("{}/registry", hub.base),
        "token": operator,
        "subject": subject,
        "compatible": with_field(&v1, json!({"name": "remarks", "type": ["null", "string"], "default": null})),
        "incompatible": with_field(&v1, json!({"name": "registry_office", "type": "string"})),
    });
    let out = crate::harness::run_python("registry_client.py", &job);
    let seen: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        seen["subjects"]
            .as_array()
            .unwrap()
            .contains(&json!(subject)),
        "{seen}"
    );
    assert_eq!(seen["latest"]["version"], 1, "{seen}");
    let id = seen["registered_id"].as_i64().unwrap();
    assert_ne!(json!(id), seen["latest"]["id"], "{seen}");
    assert_eq!(seen["registered_again_id"], json!(id), "{seen}");
    assert_eq!(seen["fetched_equal"], true, "{seen}");
    assert_eq!(seen["fetched_type"], "AVRO", "{seen}");
    assert_eq!(seen["lookup"], json!({"id": id, "version": 2}), "{seen}");
    assert_eq!(seen["versions"], json!([1, 2]), "{seen}");
    assert_eq!(seen["compatible_says"], false, "{seen}");
    assert_eq!(seen["incompatible"]["http_status"], 409, "{seen}");
    assert_eq!(seen["incompatible"]["error_code"], 409, "{seen}");
    let message = seen["incompatible"]["message"].as_str().unwrap();
    assert!(message.contains("registry_office"), "{message}");
    assert_eq!(seen["compatibility"], "BACKWARD", "{seen}");
    assert_eq!(seen["unknown_id"]["http_status"], 404, "{seen}");
    assert_eq!(seen["unknown_id"]["error_code"], 40403, "{seen}");
    hub.running.stop().await;
}

/// A department built from Confluent's stock Python parts: `AvroSerializer` gets the
/// schema from the hub's registry and writes Confluent's wire format, the value is
/// signed per `docs/signing.md` and published with confluent-kafka; the hub validates
/// and stores it, and `AvroDeserializer` reads the records back from the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_serializer_output_is_stored_and_deserializes() {
    let env = TestEnv::first_versions(Db::Sqlite, Broker::Mock).await;
    let hub = env.start().await;
    let department = env.department_token("health").await;
    let connector = env.health_connector().await;
    let key =
        datarun_domain::keys::parse_private_key(&std::fs::read(env.health_key_file()).unwrap())
            .unwrap();
    let today = datarun_domain::date::CivilDate::from_unix_millis_cst(datarun_store::now_millis());
    let mut records = Vec::new();
    for (i, row) in datarun_connector::sample::birth_certificates(2, 77)
        .iter()
        .enumerate()
    {
        let signed = connector.sign_row(row, &key).unwrap();
        let (_, body) = signed.unframed().unwrap();
        let valid = connector.schema.validate(body, today).unwrap();
        records.push(json!({
            "record_id": format!("health-python-{i}"),
            "subject": valid.subject,
            "fields": Value::Object(valid.fields),
        }));
    }
    let topic = env.kafka().records_topic("health.birth_certificate");
    let job = json!({
        "bootstrap": env.kafka().bootstrap_servers,
        "topic": topic,
        "registry_url": format!("{}/registry", hub.base),
        "token": department,
        "key_file": env.health_key_file(),
        "key_id": "health-2026",
        "department": "health",
        "record_type": "health.birth_certificate",
        "records": records,
        // Read back as a newer compatible version would: the field it adds has its default.
        "reader_schema": with_field(
            &serde_json::from_str(&connector.schema.definition).unwrap(),
            json!({"name": "remarks", "type": ["null", "string"], "default": null}),
        ),
    });
    let out = crate::harness::run_python("serde_roundtrip.py", &job);
    let seen: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(seen["published"], 2, "{seen}");

    assert_eq!(hub.wait_for_certificates(2).await, 2);
    let stored = hub
        .running
        .store
        .stored_record_ids(&["health-python-0".into(), "health-python-1".into()])
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "the hub stored both records: {stored:?}");
    assert_eq!(hub.running.store.rejection_counts().await.unwrap().0, 0);

    let versions = hub
        .running
        .store
        .schema_versions("health.birth_certificate", false)
        .await
        .unwrap();
    let read_back = seen["read_back"].as_array().unwrap();
    assert_eq!(read_back.len(), 2, "{seen}");
    for entry in read_back {
        let sent = records
            .iter()
            .find(|r| r["record_id"] == entry["record_id"])
            .unwrap();
        assert_eq!(entry["schema_id"], json!(versions[0].schema_id), "{entry}");
        let mut resolved = sent["fields"].clone();
        resolved["remarks"] = Value::Null;
        assert_eq!(
            entry["fields"], resolved,
            "the deserializer reads what was sent, resolved to the reader's version"
        );
    }
    hub.running.stop().await;
}

/// Sensitivity travels with the schema: the registry reports each field's tag, a version
/// that adds a sensitive field registers only when it says so (and the audit lists the
/// raise), and a consent releases only the fields of the version it was granted against,
/// sensitive ones only when it names them.
async fn sensitivity_travels_with_the_schema(db: Db) {
    use reqwest::Method;
    let env = TestEnv::first_versions(db, Broker::Mock).await;
    let hub = env.start().await;
    let operator = env
        .token(&["--role", "operator", "--name", "registry admin"])
        .await;
    let department = env.department_token("health").await;
    let caseworker = env.caseworker_token("public_security").await;
    let auditor = env.auditor_token().await;
    let (subject, v1) = birth_certificate_subject(&env);

    // The tags, as Confluent metadata tags keyed by field path; `health` reads as sensitive.
    let (_, latest) = send(
        &hub,
        Method::GET,
        &format!("/subjects/{subject}/versions/latest"),
        &department,
        None,
    )
    .await;
    let tags = &latest["metadata"]["tags"];
    let path = "cn.gov.gd.datarun.health.BirthCertificate";
    assert_eq!(
        tags[format!("{path}.birth_weight_grams")],
        json!(["sensitive"]),
        "{latest}"
    );
    assert_eq!(
        tags[format!("{path}.child_name")],
        json!(["personal"]),
        "{latest}"
    );
    assert_eq!(
        tags[format!("{path}.certificate_id")],
        json!(["personal"]),
        "{latest}"
    );
    let (_, by_id) = send(
        &hub,
        Method::GET,
        &format!("/schemas/ids/{}", latest["id"]),
        &department,
        None,
    )
    .await;
    assert_eq!(by_id["metadata"], latest["metadata"]);

    // The sample population, and a consent granted while version 1 is the latest.
    let (source, rows) = env.sample(2);
    env.run_connector(&source).await;
    assert_eq!(hub.wait_for_certificates(2).await, 2);
    let child = rows[0]["baby_id_no"].clone();
    let mother = env.citizen_token(&rows[0]["mother_id_no"]).await;
    // A purpose that needs every field the birth certificate has or will have here.
    let follow_up = |fields: &[&str]| datarun_domain::Purpose {
        code: datarun_domain::PurposeCode::parse("neonatal_follow_up").unwrap(),
        title_zh: "新生儿随访".into(),
        title_en: "Newborn follow-up".into(),
        legal_basis: "test".into(),
        whose: Default::default(),
        needs: std::collections::BTreeMap::from([(
            datarun_domain::RecordType::parse("health.birth_certificate").unwrap(),
            fields.iter().map(|f| (*f).to_owned()).collect(),
        )]),
    };
    let v1_fields = [
        "certificate_id",
        "child_name",
        "child_sex",
        "child_id_number",
        "date_of_birth",
        "birth_weight_grams",
        "mother_name",
    ];
    hub.running
        .store
        .register_purpose("test", &follow_up(&v1_fields))
        .await
        .unwrap();
    let grant = |fields: Option<Vec<&str>>| {
        json!({
            "subject": child,
            "requester_department": "public_security",
            "record_types": ["health.birth_certificate"],
            "fields": fields,
            "purpose": "neonatal_follow_up",
            "max_uses": 5,
        })
    };
    let (status, old_consent) = hub.post("/v1/consents", &mother, grant(None)).await;
    assert_eq!(status, 201, "{old_consent}");
    assert_eq!(
        old_consent["schema_versions"],
        json!({"health.birth_certificate": 1})
    );
    let (status, refused) = hub
        .post("/v1/consents", &mother, grant(Some(vec!["blood_type"])))
        .await;
    assert_eq!(status, 400, "a field no version has yet: {refused}");

    // Version 2 adds a personal field and a sensitive one: refused without the flag,
    // naming the field, then accepted with it.
    let mut v2 = v1.clone();
    for field in [
        json!({"name": "blood_type", "type": ["null", "string"], "default": null}),
        json!({"name": "diagnosis", "type": ["null", "string"], "default": null, "datarun.sensitivity": "sensitive"}),
    ] {
        v2["fields"].as_array_mut().unwrap().push(field);
    }
    let v2 = v2.to_string();
    expect_error(
        send(
            &hub,
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            &operator,
            Some(json!({"schema": v2})),
        )
        .await,
        422,
        42205,
        "adds sensitive field diagnosis",
    );
    let (status, added) = send(
        &hub,
        Method::POST,
        &format!("/subjects/{subject}/versions?allowSensitive=true"),
        &operator,
        Some(json!({"schema": v2})),
    )
    .await;
    assert_eq!(
        (status, added["version"].clone()),
        (200, json!(2)),
        "{added}"
    );
    let mut v2_fields = v1_fields.to_vec();
    v2_fields.extend(["blood_type", "diagnosis"]);
    hub.running
        .store
        .register_purpose("test", &follow_up(&v2_fields))
        .await
        .unwrap();
    let (status, events) = hub
        .get("/v1/audit/events?kind=schema_registered", &auditor)
        .await;
    assert_eq!(status, 200, "{events}");
    let raised = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["detail"]["version"] == 2)
        .unwrap_or_else(|| panic!("version 2's registration is audited: {events}"));
    assert_eq!(
        raised["detail"]["sensitivity_raised"],
        json!([{"field": "diagnosis", "from": null, "to": "sensitive"}]),
        "{raised}"
    );
    let (_, me) = hub.get("/v1/whoami", &operator).await;
    assert_eq!(raised["actor"], me["actor_id"], "{raised}");
    // Raising an existing field's tag is a raise too.
    let mut v3: Value = serde_json::from_str(&v2).unwrap();
    v3["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .for_each(|f| {
            if f["name"] == "child_sex" {
                f["datarun.sensitivity"] = json!("sensitive");
            }
        });
    expect_error(
        send(
            &hub,
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            &operator,
            Some(json!({"schema": v3.to_string()})),
        )
        .await,
        422,
        42205,
        "raises field child_sex from personal to sensitive",
    );

    // The department writes a new version of the child's certificate with version 2.
    let connector = env.health_connector().await;
    let key =
        datarun_domain::keys::parse_private_key(&std::fs::read(env.health_key_file()).unwrap())
            .unwrap();
    let today = datarun_domain::date::CivilDate::from_unix_millis_cst(datarun_store::now_millis());
    let signed = connector.sign_row(&rows[0], &key).unwrap();
    let (_, body) = signed.unframed().unwrap();
    let mut fields = connector.schema.validate(body, today).unwrap().fields;
    fields.insert("blood_type".into(), json!("AB"));
    fields.insert("diagnosis".into(), json!("neonatal jaundice"));
    let job = json!({
        "bootstrap": env.kafka().bootstrap_servers,
        "topic": env.kafka().records_topic("health.birth_certificate"),
        "registry_url": format!("{}/registry", hub.base),
        "token": department,
        "key_file": env.health_key_file(),
        "key_id": "health-2026",
        "department": "health",
        "record_type": "health.birth_certificate",
        "records": [{"record_id": "health-v2-0", "subject": child, "fields": fields}],
    });
    let out = crate::harness::run_python("serde_roundtrip.py", &job);
    assert!(out.contains("\"published\": 1"), "{out}");
    let store = &hub.running.store;
    for _ in 0..200 {
        if !store
            .stored_record_ids(&["health-v2-0".into()])
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        store
            .current_version(rows[0]["cert_no"].as_str())
            .await
            .unwrap()
            .map(|(id, _)| id),
        Some("health-v2-0".to_owned())
    );

    let released = |consent: &Value| {
        let body = json!({
            "consent_id": consent["consent_id"],
            "subject": child,
            "record_type": "health.birth_certificate",
            "purpose": "neonatal_follow_up",
        });
        let hub = &hub;
        let caseworker = caseworker.clone();
        async move {
            let (status, body) = hub.post("/v1/lookups", &caseworker, body).await;
            assert_eq!(status, 200, "{body}");
            let mut names: Vec<String> = body["certificates"][0]["fields"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            names.sort();
            names
        }
    };
    // Under the consent granted at version 1: neither new field, nor the sensitive one.
    let names = released(&old_consent).await;
    assert!(names.contains(&"child_name".to_owned()), "{names:?}");
    for held_back in ["blood_type", "diagnosis", "birth_weight_grams"] {
        assert!(
            !names.contains(&held_back.to_owned()),
            "{held_back} in {names:?}"
        );
    }
    // A consent granted now releases the new personal field, still no sensitive one.
    let (_, new_consent) = hub.post("/v1/consents", &mother, grant(None)).await;
    assert_eq!(
        new_consent["schema_versions"],
        json!({"health.birth_certificate": 2})
    );
    let names = released(&new_consent).await;
    assert!(names.contains(&"blood_type".to_owned()), "{names:?}");
    assert!(!names.contains(&"diagnosis".to_owned()), "{names:?}");
    // A certificate still at version 1 reads as version 2 does for a consent granted
    // against it: the field it lacks has its default.
    let other_child = rows[1]["baby_id_no"].clone();
    let other_mother = env.citizen_token(&rows[1]["mother_id_no"]).await;
    let mut other_grant = grant(None);
    other_grant["subject"] = json!(other_child);
    let (status, other_consent) = hub.post("/v1/consents", &other_mother, other_grant).await;
    assert_eq!(status, 201, "{other_consent}");
    let (status, body) = hub
        .post(
            "/v1/lookups",
            &caseworker,
            json!({"consent_id": other_consent["consent_id"], "subject": other_child, "record_type": "health.birth_certificate", "purpose": "neonatal_follow_up"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let fields = &body["certificates"][0]["fields"];
    assert_eq!(fields.get("blood_type"), Some(&Value::Null), "{fields}");
    assert!(fields.get("diagnosis").is_none(), "{fields}");
    // A consent that names the sensitive field releases it, and only what it names.
    let (_, naming) = hub
        .post(
            "/v1/consents",
            &mother,
            grant(Some(vec!["diagnosis", "child_name"])),
        )
        .await;
    assert_eq!(released(&naming).await, vec!["child_name", "diagnosis"]);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitivity_travels_with_the_schema_sqlite() {
    sensitivity_travels_with_the_schema(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitivity_travels_with_the_schema_postgres() {
    sensitivity_travels_with_the_schema(Db::Postgres).await;
}
