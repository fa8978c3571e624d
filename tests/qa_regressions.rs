//! Regressions found by using the gateway as a front-end team would: each test pins a bug
//! that was seen over real sockets.

mod common;

use common::spawn_app;

#[tokio::test]
async fn a_wrong_method_on_the_publish_api_gets_a_json_405() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let response = client
            .request(method.clone(), app.url("/v1/publish"))
            .bearer_auth(&app.state.settings.publish.admin_token)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 405, "{method}");
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(allow.as_deref(), Some("POST"), "{method}");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["code"], 40510000, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("POST")),
            "{body}"
        );
    }
    app.stop().await.expect("clean shutdown");
}
