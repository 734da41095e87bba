//! The OpenAI- and Stripe-compatible servers, seen by a real HTTP client.

mod support;

use std::sync::Arc;

use chaos::faults::{FaultKind, UpstreamFaults};
use chaos::plan::UpstreamPlan;
use chaos::upstream::{OpenAiServer, StripeServer};
use support::{AUTH, CHAT, FORM, JSON, chat, completion, request, weights_only};

fn only(kind: FaultKind, p: f64) -> UpstreamPlan {
    UpstreamPlan {
        fault_probability: p,
        weights: weights_only(kind),
        ..UpstreamPlan::default()
    }
}

#[tokio::test]
async fn openai_answers_a_completion_mentioning_the_question() {
    let server = OpenAiServer::start(Arc::new(UpstreamFaults::disabled()))
        .await
        .unwrap();
    let r = chat(server.addr()).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-test");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("What is a derivative?"), "{content}");

    // deterministic
    let again = chat(server.addr()).await;
    assert_eq!(again.json()["choices"][0]["message"]["content"], content);

    let r = completion(server.addr(), &[JSON], CHAT.as_bytes()).await;
    assert_eq!(r.status, 401);
    let r = completion(
        server.addr(),
        &[("Authorization", "Bearer "), JSON],
        CHAT.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = completion(server.addr(), &[AUTH, JSON], b"{not json").await;
    assert_eq!(r.status, 400);
    let stats = server.stats();
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.completions, 2);

    server.set_down(true);
    let r = chat(server.addr()).await;
    assert_eq!(r.status, 503);
    server.shutdown().await;
}

#[tokio::test]
async fn http_faults_follow_the_planned_rate_with_a_seeded_rng() {
    let faults = Arc::new(UpstreamFaults::new(&UpstreamPlan::default(), 1234));
    let server = OpenAiServer::start(Arc::clone(&faults)).await.unwrap();
    let n = 400u32;
    let (mut r429, mut r503, mut ok) = (0, 0, 0);
    for _ in 0..n {
        let r = chat(server.addr()).await;
        match r.status {
            200 => ok += 1,
            429 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
                r429 += 1;
            }
            503 => r503 += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    // No proxy in front: the server draws the HTTP share, 0.30 * 0.55 = 16.5 %.
    let rate = (r429 + r503) as f64 / f64::from(n);
    assert!((0.11..=0.22).contains(&rate), "HTTP fault rate {rate}");
    assert!(r429 > 0 && r503 > 0);
    let injected = faults.injected();
    assert_eq!(injected.rate_limit, r429);
    assert_eq!(injected.unavailable, r503);
    assert_eq!(server.stats().requests, u64::from(n));
    assert_eq!(server.stats().completions, ok);
}

#[tokio::test]
async fn stripe_creates_intents_and_honours_idempotency_keys() {
    let server = StripeServer::start(Arc::new(UpstreamFaults::disabled()))
        .await
        .unwrap();
    let body = b"amount=1999&currency=eur&metadata%5Bstudent_id%5D=s-1";
    let key = ("Idempotency-Key", "buy-s-1-course-7");
    let path = "/v1/payment_intents";
    let first = request(server.addr(), "POST", path, &[AUTH, FORM, key], body)
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    let v = first.json();
    assert!(v["id"].as_str().unwrap().starts_with("pi_"));
    assert_eq!(v["object"], "payment_intent");
    assert_eq!(v["amount"], 1999);
    assert_eq!(v["currency"], "eur");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["metadata"]["student_id"], "s-1");

    let replay = request(server.addr(), "POST", path, &[AUTH, FORM, key], body)
        .await
        .unwrap();
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json()["id"], v["id"]);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    let other = b"amount=2999&currency=eur&metadata%5Bstudent_id%5D=s-1";
    let clash = request(server.addr(), "POST", path, &[AUTH, FORM, key], other)
        .await
        .unwrap();
    assert_eq!(clash.status, 400);
    assert_eq!(clash.json()["error"]["type"], "idempotency_error");

    // Without a key, a retry is a second charge: the ledger shows it.
    for _ in 0..2 {
        let r = request(
            server.addr(),
            "POST",
            path,
            &[AUTH, FORM],
            b"amount=500&currency=usd&metadata%5Bstudent_id%5D=s-2",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    let bad_key = request(
        server.addr(),
        "POST",
        path,
        &[("Authorization", "Bearer pk_live"), FORM],
        body,
    )
    .await
    .unwrap();
    assert_eq!(bad_key.status, 401);
    let missing = request(
        server.addr(),
        "POST",
        path,
        &[AUTH, FORM],
        b"amount=5&currency=usd",
    )
    .await
    .unwrap();
    assert_eq!(missing.status, 400);

    let stats = server.stats();
    assert_eq!(stats.requests, 7);
    assert_eq!(stats.created, 3);
    assert_eq!(stats.replays, 1);
    let by_student = server.payments_by_student();
    assert_eq!(by_student["s-1"].len(), 1);
    assert_eq!(
        by_student["s-1"][0].idempotency_key.as_deref(),
        Some("buy-s-1-course-7")
    );
    assert_eq!(by_student["s-2"].len(), 2);
    assert_ne!(by_student["s-2"][0].id, by_student["s-2"][1].id);

    server.set_down(true);
    let r = request(server.addr(), "POST", path, &[AUTH, FORM, key], body)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(server.stats().created, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn stripe_answers_429_with_retry_after_when_told() {
    let faults = Arc::new(UpstreamFaults::new(&only(FaultKind::RateLimit, 1.0), 5));
    let server = StripeServer::start(Arc::clone(&faults)).await.unwrap();
    let r = request(
        server.addr(),
        "POST",
        "/v1/payment_intents",
        &[AUTH, FORM],
        b"amount=1&currency=usd&metadata%5Bstudent_id%5D=x",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(server.stats().created, 0);
    assert_eq!(faults.injected().rate_limit, 1);
}
