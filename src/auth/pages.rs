//! What a person sees when the login at the edge cannot finish, and the JSON an API caller gets.

use crate::html::escape;

/// Why the login failed, in words for a person (Chinese first: the users are in WeChat).
pub fn reason_text(label: &str) -> (&'static str, &'static str) {
    match label {
        "40029" | "40163" | "41008" => (
            "登录凭证已失效，请重新进入。",
            "The login code expired or was already used.",
        ),
        "40125" | "40013" | "40002" => (
            "服务配置有误，请联系管理员。",
            "The site's WeChat settings are wrong.",
        ),
        "-1" | "45011" => ("微信服务繁忙，请稍后重试。", "WeChat is busy right now."),
        "busy" => (
            "登录人数较多，正在重试……",
            "Many people are signing in right now; retrying in a moment.",
        ),
        "rate_limited" => (
            "请求过于频繁，正在重试……",
            "Too many requests from this network; retrying in a moment.",
        ),
        "timeout" | "connect" => (
            "连接微信超时，请稍后重试。",
            "WeChat did not answer in time.",
        ),
        "state" => (
            "登录已过期或不属于此浏览器，请重新登录。",
            "The login expired or was started in another browser.",
        ),
        "relay_target" => (
            "该网站未获准使用此授权中转。",
            "This site is not on the login relay's list of allowed sites.",
        ),
        "relay_request" => (
            "登录请求的参数有误，请重新进入。",
            "The login request is malformed (appid, scope, state or mode).",
        ),
        "ticket_expired" | "ticket_replayed" | "ticket_state" => (
            "登录凭证已失效，请重新登录。",
            "The login ticket expired, was already used, or belongs to another login.",
        ),
        "ticket_invalid" | "ticket_audience" => (
            "登录凭证无效，请重新登录。",
            "The login ticket is not valid for this site.",
        ),
        _ => ("登录失败，请重新进入。", "The WeChat login failed."),
    }
}

/// An HTML error page with a way to start again.
pub fn error_page(label: &str, retry_href: &str, request_id: &str) -> String {
    let (zh, en) = reason_text(label);
    format!(
        r#"<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>登录失败</title>
<style>body{{font-family:-apple-system,"PingFang SC",sans-serif;background:#f6f7f9;margin:0}}
main{{max-width:28rem;margin:4rem auto;padding:1.5rem;background:#fff;border-radius:12px;text-align:center}}
a.button{{display:inline-block;margin-top:1rem;padding:.7rem 1.6rem;background:#07c160;color:#fff;border-radius:6px;text-decoration:none}}
small{{color:#999}}</style></head>
<body><main id="wxedge-login-error" data-reason="{label}">
<h1>登录失败</h1><p>{zh}</p><p><small>{en}</small></p>
<a class="button" id="wxedge-retry" href="{href}">重新登录 / Sign in again</a>
<p><small>code {label} · request {rid}</small></p>
</main></body></html>
"#,
        label = escape(label),
        zh = zh,
        en = en,
        href = escape(retry_href),
        rid = escape(request_id),
    )
}

/// A "busy, retry" page: the same request again after `seconds` (nothing was spent: no code
/// was redeemed), or at once with the button.
pub fn busy_page(label: &str, retry_href: &str, request_id: &str, seconds: u64) -> String {
    let (zh, en) = reason_text(label);
    format!(
        r#"<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{seconds}">
<title>请稍候</title>
<style>body{{font-family:-apple-system,"PingFang SC",sans-serif;background:#f6f7f9;margin:0}}
main{{max-width:28rem;margin:4rem auto;padding:1.5rem;background:#fff;border-radius:12px;text-align:center}}
a.button{{display:inline-block;margin-top:1rem;padding:.7rem 1.6rem;background:#07c160;color:#fff;border-radius:6px;text-decoration:none}}
small{{color:#999}}</style></head>
<body><main id="wxedge-busy" data-reason="{label}">
<h1>请稍候</h1><p>{zh}</p><p><small>{en}</small></p>
<a class="button" id="wxedge-retry" href="{href}">重试 / Retry</a>
<p><small>{label} · request {rid}</small></p>
</main></body></html>
"#,
        label = escape(label),
        href = escape(retry_href),
        rid = escape(request_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_echoed() {
        let page = error_page("40163", "/p?x=\"><script>", "r<1>");
        assert!(!page.contains("<script>"));
        assert!(page.contains("&quot;&gt;&lt;script&gt;"));
        assert!(page.contains("r&lt;1&gt;"));
        assert!(page.contains("登录凭证已失效"));
    }
}
