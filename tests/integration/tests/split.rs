//! Weighted traffic splits (`weighted_clusters`): the observed shares stay
//! within five standard deviations of the configured weights.

use ferry_integration_tests::{
    clusters_yaml, five_sigma, free_addr, tally, Backend, Client, Proxy,
};

const N: usize = 2000;

fn assert_share(counts: &std::collections::BTreeMap<String, usize>, name: &str, p: f64) {
    let got = counts.get(name).copied().unwrap_or(0) as f64;
    let want = N as f64 * p;
    let tol = five_sigma(N, p);
    assert!(
        (got - want).abs() <= tol,
        "{name}: {got} of {N} requests, expected {want} ± {tol:.0} (5σ); all: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_ten_split() {
    let a = Backend::start("stable").await;
    let b = Backend::start("canary").await;
    let listen = free_addr();
    let yaml = format!(
        r#"
listeners:
  - {{name: http, address: "{listen}", route_config: r}}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route:
              weighted_clusters:
                - {{name: stable, weight: 90}}
                - {{name: canary, weight: 10}}
{}"#,
        clusters_yaml(&[&a, &b])
    );
    let _proxy = Proxy::start(&yaml).await;
    let counts = tally(&Client::h1(), &format!("http://{listen}/split"), N, 4).await;
    assert_eq!(counts.values().sum::<usize>(), N);
    assert_eq!(counts.len(), 2, "only the two clusters answer: {counts:?}");
    // 5σ for n=2000, p=0.1 is 67 requests: ±3.4 percentage points.
    assert_share(&counts, "stable", 0.9);
    assert_share(&counts, "canary", 0.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_way_split() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let listen = free_addr();
    let yaml = format!(
        r#"
listeners:
  - {{name: http, address: "{listen}", route_config: r}}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route:
              weighted_clusters:
                - {{name: a, weight: 50}}
                - {{name: b, weight: 30}}
                - {{name: c, weight: 20}}
{}"#,
        clusters_yaml(&[&a, &b, &c])
    );
    let _proxy = Proxy::start(&yaml).await;
    let counts = tally(&Client::h2c(), &format!("http://{listen}/split"), N, 4).await;
    assert_eq!(counts.values().sum::<usize>(), N);
    assert_share(&counts, "a", 0.5);
    assert_share(&counts, "b", 0.3);
    assert_share(&counts, "c", 0.2);
}
