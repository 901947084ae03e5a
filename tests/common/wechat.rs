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
    account: Account,
}

/// The account credentials (`cgi-bin/stable_token`, `cgi-bin/ticket/getticket`), as WeChat hands
/// them out: the same token and ticket while valid; what a test scripts instead.
#[derive(Default)]
struct Account {
    token_calls: usize,
    ticket_calls: usize,
    /// `force_refresh: true` seen (the edge must never send it).
    forced: usize,
    /// Bodies of `stable_token` requests that were not WeChat's shape.
    bad_bodies: usize,
    /// Serial of the current token (`ACCOUNT-TOKEN-<n>`) and ticket (`JSAPI-TICKET-<n>`).
    token_serial: usize,
    ticket_serial: usize,
    /// The token the ticket endpoint takes: older ones are 40001 "not latest".
    live_token: Option<String>,
    /// Next answers of each endpoint instead of the usual one, in order.
    token_script: Vec<Reply>,
    ticket_script: Vec<Reply>,
    /// Answer every call with HTTP 502 (WeChat down).
    down: bool,
    /// Wait this long before each answer.
    latency_ms: u64,
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

    /// Calls to `stable_token` and `getticket` so far.
    pub fn account_calls(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.account.token_calls, st.account.ticket_calls)
    }

    /// `stable_token` calls with `force_refresh: true`, and ones not shaped as WeChat wants.
    pub fn bad_token_calls(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.account.forced, st.account.bad_bodies)
    }

    /// The token the ticket endpoint takes from now on is a new one: the held one is "not
    /// latest" (what another party calling `cgi-bin/token` does to it).
    pub fn overwrite_token(&self) {
        let mut st = self.state.lock().unwrap();
        st.account.token_serial += 1;
        st.account.live_token = Some(format!("ACCOUNT-TOKEN-{}", st.account.token_serial));
    }

    /// A new ticket from the next `getticket` on (the old one ended).
    pub fn rotate_ticket(&self) {
        self.state.lock().unwrap().account.ticket_serial += 1;
    }

    /// The current ticket, as a test's own signer would use it.
    pub fn ticket(&self) -> String {
        format!(
            "JSAPI-TICKET-{}",
            self.state.lock().unwrap().account.ticket_serial
        )
    }

    /// The next `stable_token` answers, before the usual ones.
    pub fn script_token(&self, replies: Vec<Reply>) {
        self.state.lock().unwrap().account.token_script = replies;
    }

    /// The next `getticket` answers, before the usual ones.
    pub fn script_ticket(&self, replies: Vec<Reply>) {
        self.state.lock().unwrap().account.ticket_script = replies;
    }

    /// Every account call waits `ms` before its answer.
    pub fn account_latency(&self, ms: u64) {
        self.state.lock().unwrap().account.latency_ms = ms;
    }

    /// Every account call answers HTTP 502 (`true`) or works again.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().account.down = down;
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
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request_body = buf[head_end..].to_vec();
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
        "/cgi-bin/stable_token" | "/cgi-bin/ticket/getticket" => {
            let reply = account_reply(&state, path, &q, &request_body);
            let latency = state.lock().unwrap().account.latency_ms;
            let mut reply = match latency {
                0 => reply,
                ms => AccountReply::Delay(ms, Box::new(reply)),
            };
            loop {
                match reply {
                    AccountReply::Delay(ms, inner) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        reply = *inner;
                    }
                    AccountReply::Answer(s, b) => {
                        status = s;
                        body = b;
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

enum AccountReply {
    Answer(u16, String),
    Delay(u64, Box<AccountReply>),
}

fn scripted(r: Reply) -> Option<AccountReply> {
    Some(match r {
        Reply::Err(c, m) => AccountReply::Answer(200, err_json(c, m)),
        Reply::Raw(s, b) => AccountReply::Answer(s, b.to_string()),
        Reply::Delay(ms, inner) => AccountReply::Delay(ms, Box::new(scripted(*inner)?)),
        Reply::Token { .. } => return None,
    })
}

/// `stable_token` (POST JSON, normal mode) and `getticket`, as WeChat answers them.
fn account_reply(
    state: &Arc<Mutex<State>>,
    path: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> AccountReply {
    let mut st = state.lock().unwrap();
    let a = &mut st.account;
    let is_token = path == "/cgi-bin/stable_token";
    if is_token {
        a.token_calls += 1;
    } else {
        a.ticket_calls += 1;
    }
    if a.down {
        return AccountReply::Answer(502, "<html>bad gateway</html>".into());
    }
    let script = if is_token {
        &mut a.token_script
    } else {
        &mut a.ticket_script
    };
    if !script.is_empty() {
        if let Some(r) = scripted(script.remove(0)) {
            return r;
        }
    }
    if is_token {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if v.get("force_refresh").and_then(|f| f.as_bool()) == Some(true) {
            a.forced += 1;
        }
        if v["grant_type"] != "client_credential" || v["appid"] != APPID || v["secret"] != SECRET {
            a.bad_bodies += 1;
            return AccountReply::Answer(200, err_json(40013, "invalid appid or secret"));
        }
        let token = a
            .live_token
            .get_or_insert_with(|| format!("ACCOUNT-TOKEN-{}", a.token_serial))
            .clone();
        let v = serde_json::json!({ "access_token": token, "expires_in": 7200 });
        return AccountReply::Answer(200, v.to_string());
    }
    if q.get("type").map(String::as_str) != Some("jsapi") {
        return AccountReply::Answer(200, err_json(40097, "invalid args"));
    }
    if q.get("access_token") != a.live_token.as_ref() {
        return AccountReply::Answer(
            200,
            err_json(
                40001,
                "invalid credential, access_token is invalid or not latest",
            ),
        );
    }
    let v = serde_json::json!({
        "errcode": 0, "errmsg": "ok",
        "ticket": format!("JSAPI-TICKET-{}", a.ticket_serial), "expires_in": 7200,
    });
    AccountReply::Answer(200, v.to_string())
}
