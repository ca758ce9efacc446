use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use ferry_filters::{
    parse_config, Action, FilterConfigError, FilterCx, FilterEnv, FilterSpec, FilterState, Flow,
    HttpFilter, LocalReply, Registry, RequestCtx, RequestFilters,
};
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use serde::Deserialize;

use super::*;
use crate::http::replay::Replay;

/// Appends its tag to every body chunk, and `.` to the last one; adds its
/// tag to `x-t` on trailers. With `refuse_over`, answers 413 once the
/// request body passes that many bytes.
struct Tag {
    tag: Bytes,
    refuse_over: Option<u64>,
}

#[derive(Deserialize)]
struct TagConfig {
    tag: String,
    refuse_over: Option<u64>,
}

fn build_tag(
    v: &serde_json::Value,
    _: &FilterEnv,
) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    let c: TagConfig = parse_config(v)?;
    Ok(Arc::new(Tag {
        tag: Bytes::from(c.tag),
        refuse_over: c.refuse_over,
    }))
}

impl Tag {
    fn mark(&self, chunk: &mut Bytes, end: bool) {
        let mut b = chunk.to_vec();
        b.extend_from_slice(&self.tag);
        if end {
            b.push(b'.');
        }
        *chunk = b.into();
    }
}

impl HttpFilter for Tag {
    fn wants_state(&self) -> bool {
        self.refuse_over.is_some()
    }
    fn wants_request_body(&self) -> bool {
        true
    }
    fn wants_response_body(&self) -> bool {
        true
    }
    fn on_request_body(&self, cx: &mut FilterCx<'_>, chunk: &mut Bytes, end: bool) -> Flow {
        if let Some(max) = self.refuse_over {
            let seen = match &*cx.state {
                FilterState::Numbers([n, ..]) => *n,
                _ => 0,
            } + chunk.len() as u64;
            *cx.state = FilterState::Numbers([seen, 0, 0]);
            if seen > max {
                return Flow::Respond(LocalReply::new(StatusCode::PAYLOAD_TOO_LARGE, "big"));
            }
        }
        self.mark(chunk, end);
        Flow::Continue
    }
    fn on_response_body(&self, _: &mut FilterCx<'_>, chunk: &mut Bytes, end: bool) {
        self.mark(chunk, end);
    }
    fn on_response_trailers(&self, _: &mut FilterCx<'_>, trailers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_maybe_shared(self.tag.clone()) {
            trailers.append("x-t", v);
        }
    }
}

/// Filters `1` and `2` (config JSON for each), past the request head.
fn filters(one: serde_json::Value, two: serde_json::Value) -> RequestFilters {
    let mut registry = Registry::builtin();
    registry.register("one", build_tag);
    registry.register("two", build_tag);
    let specs = vec![
        FilterSpec {
            name: "one".into(),
            config: Some(one),
            disabled: false,
        },
        FilterSpec {
            name: "two".into(),
            config: Some(two),
            disabled: false,
        },
    ];
    let chain = registry.build_chain(&specs, "t").expect("chain builds");
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let mut f = chain.start(
        RequestCtx::new(peer, Version::HTTP_11, SystemTime::now()),
        None,
    );
    let (mut head, ()) = http::Request::new(()).into_parts();
    assert!(matches!(f.on_request_head(&mut head), Action::Continue));
    f
}

fn tags() -> RequestFilters {
    filters(
        serde_json::json!({"tag": "1"}),
        serde_json::json!({"tag": "2"}),
    )
}

fn share(f: RequestFilters) -> SharedFilters {
    Filters::Owned(f).into_shared()
}

/// Frames one per poll; `says_end`: reports its end as soon as the last
/// frame is out (as hyper does for a known length), else only by `None`.
struct Chunks {
    frames: VecDeque<Frame<Bytes>>,
    says_end: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.get_mut().frames.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.says_end && self.frames.is_empty()
    }
}

fn chunks(parts: &[&'static str], trailers: bool, says_end: bool) -> Chunks {
    let mut frames: VecDeque<Frame<Bytes>> = parts
        .iter()
        .map(|p| Frame::data(Bytes::from_static(p.as_bytes())))
        .collect();
    if trailers {
        frames.push_back(Frame::trailers(HeaderMap::new()));
    }
    Chunks { frames, says_end }
}

/// What a body yields, polled synchronously: each frame as text (`T:` and
/// the `x-t` values for trailers), or `ERR` for an error, which ends it.
fn frames<B: Body<Data = Bytes, Error = BodyError> + Unpin>(b: &mut B, n: usize) -> Vec<String> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    while out.len() < n {
        match Pin::new(&mut *b).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) => out.push(String::from_utf8_lossy(&d).into_owned()),
                Err(f) => {
                    let t = f.into_trailers().unwrap_or_default();
                    let v: Vec<&str> = t
                        .get_all("x-t")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    out.push(format!("T:{}", v.join(",")));
                }
            },
            Poll::Ready(Some(Err(_))) => {
                out.push("ERR".into());
                break;
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("test bodies never pend"),
        }
    }
    out
}

#[test]
fn request_chunks_go_through_the_hooks_once_whatever_the_tries() {
    let ex = share(tags());
    let hooked = FilteredBody::new(chunks(&["ab", "cd"], false, true), ex, Side::Request);
    let replay = Replay::new(hooked, 1024);
    let mut first = replay.body();
    assert_eq!(frames(&mut first, 1), ["ab12"]);
    drop(first); // the try failed after one chunk
    let mut second = replay.body();
    assert_eq!(
        frames(&mut second, 10),
        ["ab12", "cd1.2."],
        "the replayed chunk is not hooked again; the last one is marked once"
    );
    assert!(second.is_end_stream());
}

#[test]
fn a_body_that_ends_without_saying_so_gets_an_empty_last_chunk() {
    let ex = share(tags());
    let mut b = FilteredBody::new(chunks(&["ab"], false, false), ex, Side::Request);
    assert_eq!(frames(&mut b, 10), ["ab12", "1.2."]);
}

#[test]
fn a_request_body_reply_fails_the_stream_and_is_kept_for_the_pipeline() {
    let f = filters(
        serde_json::json!({"tag": "1"}),
        serde_json::json!({"tag": "2", "refuse_over": 3}),
    );
    let ex = share(f);
    let mut b = FilteredBody::new(
        chunks(&["ab", "cd", "ef"], false, true),
        ex.clone(),
        Side::Request,
    );
    assert_eq!(frames(&mut b, 10), ["ab12", "ERR"]);
    assert!(answered(&ex));
    assert_eq!(frames(&mut b, 10), ["ERR"], "it stays failed");
    let mut f = Filters::Shared(ex.clone());
    let reply = f.take_reply().expect("the reply");
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(f.take_reply().is_none(), "taken once");
    // The reply goes back through filter 1 only.
    let resp = f.with(|f| f.local_response(reply));
    assert_eq!(resp.body().as_ref(), b"big1.");
}

#[test]
fn response_hooks_run_in_reverse_and_trailers_follow_the_last_chunk() {
    let ex = share(tags());
    let mut b = FilteredBody::new(chunks(&["ab", "cd"], true, true), ex, Side::Response);
    assert!(b.size_hint().exact().is_none(), "the length may change");
    assert_eq!(frames(&mut b, 10), ["ab21", "cd21", "2.1.", "T:2,1"]);
    assert!(b.is_end_stream());
}

#[test]
fn read_whole_returns_the_hooked_body_with_its_length_and_trailers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut f = tags();
        let Ok((body, len)) = read_whole(&mut f, chunks(&["ab", "cd"], false, true)).await else {
            panic!("read")
        };
        assert_eq!(len, 10);
        assert!(matches!(&body, ProxyBody::Full(Some(b)) if b.as_ref() == b"ab12cd1.2."));

        let mut f = tags();
        let Ok((body, len)) = read_whole(&mut f, chunks(&["ab"], true, true)).await else {
            panic!("read")
        };
        assert_eq!(len, 8, "ab12 then the end mark 1.2.");
        assert!(
            matches!(&body, ProxyBody::FullWithTrailers(bt) if bt.0.is_some() && bt.1.is_some())
        );

        let mut f = filters(
            serde_json::json!({"tag": "1", "refuse_over": 2}),
            serde_json::json!({"tag": "2"}),
        );
        match read_whole(&mut f, chunks(&["ab", "c"], false, true)).await {
            Err(Unbuffered::Answered(r)) => assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE),
            _ => panic!("answered at the third byte"),
        }
    });
}

#[test]
fn owned_filters_have_no_reply_and_share_once() {
    let mut f = Filters::Owned(tags());
    assert!(f.take_reply().is_none());
    let ex = f.into_shared();
    let again = Filters::Shared(ex.clone()).into_shared();
    assert!(Arc::ptr_eq(&ex, &again));
}
