//! A programmable WeChat API stand-in speaking the real wire format (HTTP 200 with a JSON
//! body labelled text/plain, `errcode` answers with a `req_id` hint), for error injection.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const APPID: &str = "wxtestappid0001";
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// One scripted answer to `/sns/oauth2/access_token`.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Success for this openid (unionid, snapshot flag, scope).
    Token {
        openid: String,
        unionid: Option<String>,
        snapshot: bool,
        scope: &'static str,
    },
    Err(i64, &'static str),
    /// Raw HTTP status and body.
    Raw(u16, &'static str),
    /// Wait, then answer.
    Delay(u64, Box<Reply>),
}

pub fn token(openid: &str) -> Reply {
    Reply::Token {
        openid: openid.into(),
        unionid: None,
        snapshot: false,
        scope: "snsapi_base",
    }
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, Vec<Reply>>,
    calls: HashMap<String, usize>,
    userinfo_calls: usize,
}

pub struct FakeWechat {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWechat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWechat {
    pub async fn start() -> FakeWechat {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        FakeWechat { addr, state, task }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers for `code`, in order; the last one repeats. Unscripted codes get 40029.
    pub fn script(&self, code: &str, replies: Vec<Reply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(code.into(), replies);
    }

    pub fn calls(&self, code: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(code)
            .copied()
            .unwrap_or(0)
    }

    pub fn userinfo_calls(&self) -> usize {
        self.state.lock().unwrap().userinfo_calls
    }
}

fn query_map(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

fn err_json(code: i64, msg: &str) -> String {
    format!("{{\"errcode\":{code},\"errmsg\":\"{msg}, hints: [ req_id: TeSt{code:05} ]\"}}")
}

async fn serve(mut sock: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let q = query_map(query);
    let mut status = 200u16;
    let body: String;
    match path {
        "/sns/oauth2/access_token" => {
            let code = q.get("code").cloned().unwrap_or_default();
            let reply = {
                let mut st = state.lock().unwrap();
                *st.calls.entry(code.clone()).or_default() += 1;
                let n = st.calls[&code];
                if q.get("appid").map(String::as_str) != Some(APPID) {
                    Reply::Err(40013, "invalid appid")
                } else if q.get("secret").map(String::as_str) != Some(SECRET) {
                    Reply::Err(40125, "invalid appsecret")
                } else if q.get("grant_type").map(String::as_str) != Some("authorization_code") {
                    Reply::Err(40002, "invalid grant_type")
                } else {
                    match st.scripts.get(&code) {
                        Some(list) if !list.is_empty() => list[(n - 1).min(list.len() - 1)].clone(),
                        _ => Reply::Err(40029, "invalid code"),
                    }
                }
            };
            let mut reply = reply;
            loop {
                match reply {
                    Reply::Delay(ms, inner) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        reply = *inner;
                    }
                    Reply::Token {
                        openid,
                        unionid,
                        snapshot,
                        scope,
                    } => {
                        let mut v = serde_json::json!({
                            "access_token": format!("ACCESS-{openid}"), "expires_in": 7200,
                            "refresh_token": format!("REFRESH-{openid}"), "openid": openid, "scope": scope,
                        });
                        if snapshot {
                            v["is_snapshotuser"] = 1.into();
                        }
                        if let Some(u) = unionid {
                            v["unionid"] = u.into();
                        }
                        body = v.to_string();
                        break;
                    }
                    Reply::Err(c, m) => {
                        body = err_json(c, m);
                        break;
                    }
                    Reply::Raw(s, b) => {
                        status = s;
                        body = b.to_string();
                        break;
                    }
                }
            }
        }
        "/sns/userinfo" => {
            state.lock().unwrap().userinfo_calls += 1;
            let token = q.get("access_token").cloned().unwrap_or_default();
            let openid = q.get("openid").cloned().unwrap_or_default();
            body = if token == format!("ACCESS-{openid}") {
                serde_json::json!({
                    "openid": openid, "nickname": "微信用户 Test", "sex": 0, "province": "", "city": "", "country": "",
                    "headimgurl": "https://thirdwx.qlogo.cn/mmopen/test/132", "privilege": [],
                })
                .to_string()
            } else {
                err_json(40001, "invalid credential")
            };
        }
        _ => {
            status = 404;
            body = "not found".into();
        }
    }
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
}
