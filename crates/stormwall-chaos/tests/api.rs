//! The HTTP API: Toxiproxy 2.x's paths, methods, status codes and JSON.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn version_and_empty_list() {
    let (_server, api) = start_api().await;
    let (status, body) = request(&api, "GET", "/version", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["version"],
        stormwall_chaos::TOXIPROXY_API_VERSION
    );
    assert_eq!(
        request(&api, "GET", "/proxies", "").await,
        (200, "{}".into())
    );
}

#[tokio::test]
async fn proxy_lifecycle_create_show_conflict_update_delete() {
    let (_server, api) = start_api().await;
    let upstream = echo_server().await;
    let create = json!({"name": "db", "upstream": upstream.to_string(), "listen": "127.0.0.1:0"});
    let (status, body) = request(&api, "POST", "/proxies", &create.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let proxy = json(&body);
    assert_eq!(proxy["name"], "db");
    assert_eq!(proxy["enabled"], true);
    assert_eq!(proxy["toxics"], json!([]));
    let listen = proxy["listen"].as_str().unwrap().to_owned();
    assert!(
        !listen.ends_with(":0"),
        "the real port is reported: {listen}"
    );

    // The proxy forwards.
    let mut conn = tokio::net::TcpStream::connect(&listen).await.unwrap();
    roundtrip(&mut conn, b"ping").await.unwrap();

    let (status, body) = request(&api, "POST", "/proxies", &create.to_string()).await;
    assert_eq!(
        (status, json(&body)),
        (409, json!({"error": "proxy already exists", "status": 409}))
    );

    let (status, body) = request(&api, "GET", "/proxies/db", "").await;
    assert_eq!(
        (status, json(&body)["listen"].as_str()),
        (200, Some(listen.as_str()))
    );
    let (status, body) = request(&api, "GET", "/proxies", "").await;
    assert_eq!(
        (status, json(&body)["db"]["upstream"].clone()),
        (200, json!(upstream.to_string()))
    );

    // Disabling closes live connections and stops listening.
    let (status, body) = request(&api, "PATCH", "/proxies/db", r#"{"enabled": false}"#).await;
    assert_eq!(
        (status, json(&body)["enabled"].clone()),
        (200, json!(false))
    );
    assert!(roundtrip(&mut conn, b"again").await.is_err());
    assert!(tokio::net::TcpStream::connect(&listen).await.is_err());
    // POST updates too (Toxiproxy's older clients use it); the same port comes back.
    let (status, body) = request(&api, "POST", "/proxies/db", r#"{"enabled": true}"#).await;
    assert_eq!(
        (status, json(&body)["listen"].clone()),
        (200, json!(listen))
    );
    let mut conn = tokio::net::TcpStream::connect(&listen).await.unwrap();
    roundtrip(&mut conn, b"back").await.unwrap();

    assert_eq!(request(&api, "DELETE", "/proxies/db", "").await.0, 204);
    assert!(roundtrip(&mut conn, b"gone").await.is_err());
    assert!(tokio::net::TcpStream::connect(&listen).await.is_err());
    let (status, body) = request(&api, "GET", "/proxies/db", "").await;
    assert_eq!(
        (status, json(&body)),
        (404, json!({"error": "proxy not found", "status": 404}))
    );
}

async fn roundtrip(conn: &mut tokio::net::TcpStream, message: &[u8]) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(message).await?;
    let mut back = vec![0; message.len()];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        conn.read_exact(&mut back),
    )
    .await
    .map_err(|_| std::io::Error::other("no answer"))??;
    if read == message.len() && back == message {
        Ok(())
    } else {
        Err(std::io::Error::other("wrong answer"))
    }
}

#[tokio::test]
async fn toxic_lifecycle_with_defaults_conflict_update_delete() {
    let (_server, api) = start_api().await;
    let upstream = echo_server().await;
    let create = json!({"name": "db", "upstream": upstream.to_string()});
    assert_eq!(
        request(&api, "POST", "/proxies", &create.to_string())
            .await
            .0,
        201
    );

    let toxic = r#"{"type": "latency", "attributes": {"latency": 10}}"#;
    let (status, body) = request(&api, "POST", "/proxies/db/toxics", toxic).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        json!({"name": "latency_downstream", "type": "latency", "stream": "downstream",
               "toxicity": 1.0, "attributes": {"latency": 10, "jitter": 0}})
    );
    let (status, body) = request(&api, "POST", "/proxies/db/toxics", toxic).await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (409, json!("toxic already exists"))
    );

    let (status, body) = request(
        &api,
        "PATCH",
        "/proxies/db/toxics/latency_downstream",
        r#"{"attributes": {"jitter": 3}, "toxicity": 0.5}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["attributes"],
        json!({"latency": 10, "jitter": 3})
    );
    assert_eq!(json(&body)["toxicity"], json!(0.5));

    let (_, body) = request(&api, "GET", "/proxies/db/toxics", "").await;
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    let (_, body) = request(&api, "GET", "/proxies/db", "").await;
    assert_eq!(json(&body)["toxics"][0]["name"], "latency_downstream");
    let (status, _) = request(&api, "GET", "/proxies/db/toxics/latency_downstream", "").await;
    assert_eq!(status, 200);

    assert_eq!(
        request(&api, "DELETE", "/proxies/db/toxics/latency_downstream", "")
            .await
            .0,
        204
    );
    let (status, body) = request(&api, "DELETE", "/proxies/db/toxics/latency_downstream", "").await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (404, json!("toxic not found"))
    );
    let (status, _) = request(&api, "POST", "/proxies/nope/toxics", toxic).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_leaves_other_proxies_running() {
    let (_server, api) = start_api().await;
    let upstream = echo_server().await;
    let (_, body) = request(
        &api,
        "POST",
        "/proxies",
        &json!({"name": "ok", "upstream": upstream.to_string()}).to_string(),
    )
    .await;
    let ok_listen = json(&body)["listen"].as_str().unwrap().to_owned();

    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/proxies",
            "{not json".into(),
            400,
            "bad request body",
        ),
        (
            "POST",
            "/proxies",
            json!({"name": "x"}).to_string(),
            400,
            "missing required field: upstream",
        ),
        (
            "POST",
            "/proxies",
            json!({"upstream": "127.0.0.1:1"}).to_string(),
            400,
            "missing required field: name",
        ),
        (
            "POST",
            "/proxies",
            json!({"name": 5, "upstream": "127.0.0.1:1"}).to_string(),
            400,
            "name must be a string (got 5)",
        ),
        (
            "POST",
            "/proxies",
            json!({"name": "x", "upstream": "no-such-host.invalid:80"}).to_string(),
            400,
            "upstream \"no-such-host.invalid:80\" does not resolve",
        ),
        (
            "POST",
            "/proxies",
            json!({"name": "x", "upstream": "127.0.0.1:1", "listen": ok_listen}).to_string(),
            500,
            "listen 127.0.0.1:",
        ),
        (
            "POST",
            "/proxies/ok/toxics",
            json!({"type": "earthquake"}).to_string(),
            400,
            "invalid toxic type: earthquake",
        ),
        (
            "POST",
            "/proxies/ok/toxics",
            json!({"type": "latency", "toxicity": 2}).to_string(),
            400,
            "toxicity must be a number from 0.0 to 1.0 (got 2)",
        ),
        (
            "POST",
            "/proxies/ok/toxics",
            json!({"type": "latency", "attributes": {"latency": -1}}).to_string(),
            400,
            "attributes.latency must be an integer from 0 to 9223372036854775807 (got -1)",
        ),
        (
            "POST",
            "/proxies/ok/toxics",
            json!({"type": "latency", "stream": "sideways"}).to_string(),
            400,
            "stream was invalid",
        ),
        (
            "PATCH",
            "/proxies/ok",
            json!({"enabled": "yes"}).to_string(),
            400,
            "enabled must be true or false",
        ),
        ("GET", "/nowhere", String::new(), 404, "not found"),
    ];
    for (method, path, body, status, message) in cases {
        let (got, answer) = request(&api, method, path, &body).await;
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        let answer = json(&answer);
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{answer}"
        );
        assert_eq!(answer["status"], status);
    }
    // The failed create did not disturb the proxy already there.
    let mut conn = tokio::net::TcpStream::connect(&ok_listen).await.unwrap();
    roundtrip(&mut conn, b"still here").await.unwrap();
    let (_, body) = request(&api, "GET", "/proxies", "").await;
    assert_eq!(json(&body).as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn browsers_are_refused() {
    let (_server, api) = start_api().await;
    let (status, _) = request_as(
        &api,
        "GET",
        "/proxies",
        "",
        "Mozilla/5.0 (X11; Linux x86_64)",
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn populate_creates_and_replaces_and_reset_clears_toxics_and_enables() {
    let (_server, api) = start_api().await;
    let a = echo_server().await;
    let b = echo_server().await;
    let list = json!([
        {"name": "a", "upstream": a.to_string(), "listen": "127.0.0.1:0"},
        {"name": "b", "upstream": b.to_string(), "listen": "127.0.0.1:0", "enabled": false},
    ]);
    let (status, body) = request(&api, "POST", "/populate", &list.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let proxies = json(&body)["proxies"].as_array().unwrap().clone();
    assert_eq!(proxies.len(), 2);
    assert_eq!(proxies[1]["enabled"], false);

    // Same again with a new upstream for "a": replaced.
    let list = json!({"proxies": [{"name": "a", "upstream": b.to_string()}]});
    let (status, body) = request(&api, "POST", "/populate", &list.to_string()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["proxies"][0]["upstream"], b.to_string());

    let toxic = r#"{"type": "timeout", "attributes": {"timeout": 0}}"#;
    assert_eq!(
        request(&api, "POST", "/proxies/a/toxics", toxic).await.0,
        200
    );
    assert_eq!(request(&api, "POST", "/reset", "").await.0, 204);
    let (_, body) = request(&api, "GET", "/proxies", "").await;
    let all = json(&body);
    assert_eq!(all["a"]["toxics"], json!([]));
    assert_eq!(all["b"]["enabled"], true);

    let (status, body) = request(&api, "POST", "/populate", r#"[{"name": "c"}]"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("proxies[0]"));
}

/// Whether a connection through `listen` reaches the echo server behind it.
async fn forwards(listen: &str) -> bool {
    match tokio::net::TcpStream::connect(listen).await {
        Ok(mut conn) => roundtrip(&mut conn, b"x").await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn changing_the_upstream_of_an_enabled_proxy_rebinds_its_port_20_times_in_a_row() {
    let (_server, api) = start_api().await;
    let upstreams = [echo_server().await, echo_server().await];
    let create = json!({"name": "db", "upstream": upstreams[0].to_string()});
    let (_, body) = request(&api, "POST", "/proxies", &create.to_string()).await;
    let listen = json(&body)["listen"].as_str().unwrap().to_owned();
    for i in 0..20 {
        // A live connection: the update closes it before answering (Toxiproxy's stop()).
        let mut live = tokio::net::TcpStream::connect(&listen).await.unwrap();
        roundtrip(&mut live, b"live").await.unwrap();
        let upstream = upstreams[(i + 1) % 2].to_string();
        let (status, body) = request(
            &api,
            "POST",
            "/proxies/db",
            &json!({"upstream": upstream}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "update {i}: {body}");
        let proxy = json(&body);
        assert_eq!(
            (
                proxy["enabled"].clone(),
                proxy["listen"].clone(),
                proxy["upstream"].clone()
            ),
            (json!(true), json!(listen), json!(upstream)),
            "update {i}"
        );
        assert!(roundtrip(&mut live, b"gone").await.is_err(), "update {i}");
        assert!(
            forwards(&listen).await,
            "update {i}: the same port forwards"
        );
    }
}

#[tokio::test]
async fn populate_with_a_changed_upstream_on_a_fixed_port_replaces_the_proxy_20_times_in_a_row() {
    let (_server, api) = start_api().await;
    let upstreams = [echo_server().await, echo_server().await];
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    for i in 0..20 {
        let upstream = upstreams[i % 2].to_string();
        let list = json!([{"name": "db", "upstream": upstream, "listen": listen}]);
        let (status, body) = request(&api, "POST", "/populate", &list.to_string()).await;
        assert_eq!(status, 201, "populate {i}: {body}");
        assert_eq!(json(&body)["proxies"][0]["upstream"], json!(upstream));
        assert!(forwards(&listen).await, "populate {i}");
    }
    let (_, body) = request(&api, "GET", "/proxies", "").await;
    assert_eq!(json(&body).as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn disable_and_delete_close_the_listener_before_answering() {
    let (_server, api) = start_api().await;
    let upstream = echo_server().await;
    for i in 0..20 {
        let name = format!("p{i}");
        let create = json!({"name": name, "upstream": upstream.to_string()});
        let (_, body) = request(&api, "POST", "/proxies", &create.to_string()).await;
        let listen = json(&body)["listen"].as_str().unwrap().to_owned();
        assert!(forwards(&listen).await);
        let path = format!("/proxies/{name}");
        let (status, _) = request(&api, "POST", &path, r#"{"enabled": false}"#).await;
        assert_eq!(status, 200);
        // Refused outright: nothing is listening any more.
        let refused = tokio::net::TcpStream::connect(&listen).await.map(|_| ());
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{i}: after disable"
        );
        assert_eq!(
            request(&api, "POST", &path, r#"{"enabled": true}"#).await.0,
            200
        );
        assert!(forwards(&listen).await);
        assert_eq!(request(&api, "DELETE", &path, "").await.0, 204);
        let refused = tokio::net::TcpStream::connect(&listen).await.map(|_| ());
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{i}: after delete"
        );
    }
}

#[tokio::test]
async fn a_move_to_a_taken_address_fails_and_leaves_the_proxy_where_it_was() {
    let (_server, api) = start_api().await;
    let upstream = echo_server().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let create = json!({"name": "db", "upstream": upstream.to_string()});
    let (_, body) = request(&api, "POST", "/proxies", &create.to_string()).await;
    let listen = json(&body)["listen"].as_str().unwrap().to_owned();
    let (status, body) = request(
        &api,
        "POST",
        "/proxies/db",
        &json!({"listen": taken}).to_string(),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains(&taken),
        "{body}"
    );
    let (_, body) = request(&api, "GET", "/proxies/db", "").await;
    let proxy = json(&body);
    assert_eq!(
        (proxy["enabled"].clone(), proxy["listen"].clone()),
        (json!(true), json!(listen))
    );
    assert!(forwards(&listen).await);
}
