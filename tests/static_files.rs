//! Static serving through the real binary: the uni-app fixture and purpose-built trees.

mod common;

use common::*;
use std::io::Write;

const JS: &str = "/assets/index-bydhfUo3.js";

#[test]
fn serves_the_uniapp_build_with_types_validators_and_cache_policy() {
    let edge = start_edge(&[]);
    let index = std::fs::read(fixture_dist().join("index.html")).unwrap();

    let r = get(&edge, "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, index);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("etag").unwrap().starts_with('"'));
    assert!(httpdate::parse_http_date(r.header("last-modified").unwrap()).is_ok());
    assert!(r.header("x-request-id").is_some_and(|v| v.len() == 32));

    let js = get(&edge, JS, &[]);
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    assert_eq!(
        js.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(
        js.body,
        std::fs::read(fixture_dist().join(&JS[1..])).unwrap()
    );
    assert_eq!(
        js.header("content-encoding"),
        None,
        "no Accept-Encoding, no encoding"
    );

    let css = get(&edge, "/assets/uni.424060a0.css", &[]);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let png = get(&edge, "/static/logo.png", &[]);
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert_eq!(
        png.header("cache-control"),
        Some("no-cache"),
        "uni-app's static/ has no hashes"
    );
}

#[test]
fn conditional_requests_and_head() {
    let edge = start_edge(&[]);
    let first = get(&edge, JS, &[]);
    let etag = first.header("etag").unwrap().to_string();
    let lm = first.header("last-modified").unwrap().to_string();

    let r = get(&edge, JS, &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("content-type"), None);
    let r = get(
        &edge,
        JS,
        &[("If-None-Match", &format!("\"nope\", W/{etag}"))],
    );
    assert_eq!(r.status, 304, "weak comparison and lists");
    assert_eq!(get(&edge, JS, &[("If-Modified-Since", &lm)]).status, 304);
    assert_eq!(
        get(
            &edge,
            JS,
            &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")]
        )
        .status,
        200
    );
    assert_eq!(
        get(
            &edge,
            JS,
            &[("If-None-Match", "\"stale\""), ("If-Modified-Since", &lm)]
        )
        .status,
        200
    );
    assert_eq!(
        get(&edge, "/assets/nope-12345678.js", &[("If-None-Match", "*")]).status,
        404,
        "preconditions never turn a 404 into 304"
    );

    let h = request(&edge, "HEAD", JS, &[], b"");
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), first.header("content-length"));
}

#[test]
fn ranges() {
    let edge = start_edge(&[]);
    let full = get(&edge, JS, &[]).body;
    let r = get(&edge, JS, &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &full[10..20]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{}", full.len()).as_str())
    );
    let r = get(&edge, JS, &[("Range", "bytes=-5")]);
    assert_eq!(r.body, &full[full.len() - 5..]);
    let r = get(&edge, JS, &[("Range", &format!("bytes={}-", full.len()))]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", full.len()).as_str())
    );
    let r = get(&edge, JS, &[("Range", "bytes=0-1,4-5")]);
    assert_eq!(r.status, 206);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges"));
    let etag = get(&edge, JS, &[]).header("etag").unwrap().to_string();
    assert_eq!(
        get(&edge, JS, &[("Range", "bytes=0-9"), ("If-Range", &etag)]).status,
        206
    );
    let r = get(
        &edge,
        JS,
        &[("Range", "bytes=0-9"), ("If-Range", "\"changed\"")],
    );
    assert_eq!((r.status, r.body.len()), (200, full.len()));
}

#[test]
fn spa_fallback_only_for_navigations() {
    let edge = start_edge(&[]);
    let index = std::fs::read(fixture_dist().join("index.html")).unwrap();
    for nav in [
        "/pages/login/login",
        "/pages/wxAuthPage/wxAuthPage?from=share&x=1",
        "/pages/index/index",
    ] {
        let r = get(&edge, nav, &[("Accept", "text/html,application/xhtml+xml")]);
        assert_eq!((r.status, &r.body), (200, &index), "{nav}");
    }
    for miss in [
        "/assets/missing.js",
        "/assets/gone",
        "/nothing.css",
        "/favicon.ico",
        "/static/missing",
    ] {
        let r = get(&edge, miss, &[("Accept", "text/html")]);
        assert_eq!(r.status, 404, "{miss}");
        assert_ne!(r.body, index, "{miss}");
    }
    assert_eq!(
        get(&edge, "/pages/x", &[("Accept", "application/json")]).status,
        404,
        "an XHR is no navigation"
    );
    let r = get(&edge, "/_wxedge/nothing", &[("Accept", "text/html")]);
    assert_eq!(
        r.status, 404,
        "the edge's namespace never falls back to the SPA"
    );
}

#[test]
fn directories_redirect_and_serve_index() {
    let dist = temp_dir("dirs");
    std::fs::create_dir_all(dist.join("docs")).unwrap();
    std::fs::write(dist.join("index.html"), "root").unwrap();
    std::fs::write(dist.join("docs/index.html"), "docs index").unwrap();
    let d = dist.to_str().unwrap();
    let edge = start_edge(&[("WXEDGE_DIST", d)]);
    let r = get(&edge, "/docs?x=1", &[]);
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/?x=1")));
    let r = get(&edge, "/docs/", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "docs index"));
}

#[test]
fn precompressed_twins_and_on_the_fly_compression() {
    let dist = temp_dir("gz");
    std::fs::write(dist.join("index.html"), "<html></html>").unwrap();
    let text = "function hello(){return 'wxedge';}\n".repeat(200);
    std::fs::write(dist.join("app.js"), &text).unwrap();
    // A precompressed twin made by the build: served as is, with its own ETag.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    let twin = gz.finish().unwrap();
    std::fs::write(dist.join("app.js.gz"), &twin).unwrap();
    std::fs::write(dist.join("big.css"), ".a{color:red}\n".repeat(300)).unwrap();
    std::fs::write(dist.join("tiny.css"), ".a{}").unwrap();
    let d = dist.to_str().unwrap();
    let edge = start_edge(&[("WXEDGE_DIST", d)]);

    let plain = get(&edge, "/app.js", &[]);
    let g = get(&edge, "/app.js", &[("Accept-Encoding", "gzip")]);
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert_eq!(g.body, twin, "the build's own .gz is served byte for byte");
    assert_eq!(g.header("vary"), Some("Accept-Encoding"));
    assert_ne!(g.header("etag"), plain.header("etag"));
    let b = get(
        &edge,
        "/app.js",
        &[("Accept-Encoding", "gzip, deflate, br")],
    );
    assert_eq!(
        b.header("content-encoding"),
        Some("br"),
        "no .br twin: made at start-up"
    );
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &b.body[..], &mut out).unwrap();
    assert_eq!(out, text.as_bytes());
    assert_eq!(
        get(&edge, "/app.js", &[("Accept-Encoding", "br;q=0, gzip;q=0")])
            .header("content-encoding"),
        None
    );

    let css = get(&edge, "/big.css", &[("Accept-Encoding", "gzip")]);
    assert_eq!(css.header("content-encoding"), Some("gzip"));
    let mut dec = flate2::read::GzDecoder::new(&css.body[..]);
    let mut s = String::new();
    std::io::Read::read_to_string(&mut dec, &mut s).unwrap();
    assert_eq!(s, ".a{color:red}\n".repeat(300));
    assert_eq!(
        get(&edge, "/tiny.css", &[("Accept-Encoding", "gzip")]).header("content-encoding"),
        None,
        "below the threshold"
    );
    // 304 works per encoding.
    let etag = css.header("etag").unwrap();
    assert_eq!(
        get(
            &edge,
            "/big.css",
            &[("Accept-Encoding", "gzip"), ("If-None-Match", etag)]
        )
        .status,
        304
    );
}

#[test]
fn large_files_fall_back_to_disk_with_ranges() {
    let dist = temp_dir("disk");
    std::fs::write(dist.join("index.html"), "x").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dist.join("video.mp4"), &big).unwrap();
    let d = dist.to_str().unwrap();
    let edge = start_edge(&[
        ("WXEDGE_DIST", d),
        ("WXEDGE_MEMORY_MAX_FILE_BYTES", "100000"),
    ]);
    assert!(edge.stderr().contains("1 on disk"), "{}", edge.stderr());
    let r = get(&edge, "/video.mp4", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, big);
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    let r = get(&edge, "/video.mp4", &[("Range", "bytes=100000-200009")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &big[100_000..200_010]);
    let etag = r.header("etag").unwrap().to_string();
    assert_eq!(
        get(&edge, "/video.mp4", &[("If-None-Match", &etag)]).status,
        304
    );
}

#[test]
fn nothing_escapes_the_root() {
    let outside = temp_dir("outside");
    std::fs::write(outside.join("secret.txt"), "TOP SECRET").unwrap();
    let dist = temp_dir("safe");
    std::fs::write(dist.join("index.html"), "<p>index</p>").unwrap();
    std::fs::write(dist.join(".env"), "PASSWORD=1").unwrap();
    std::fs::create_dir_all(dist.join(".git")).unwrap();
    std::fs::write(dist.join(".git/config"), "[core]").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), dist.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, dist.join("leakdir")).unwrap();
    std::fs::write(dist.join("inside.txt"), "fine").unwrap();
    std::os::unix::fs::symlink(dist.join("inside.txt"), dist.join("alias.txt")).unwrap();
    let d = dist.to_str().unwrap();
    let edge = start_edge(&[("WXEDGE_DIST", d)]);

    for path in [
        "/../outside/secret.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/a/..%2f..%2f..%2fetc/passwd",
        "/..%5c..%5cetc%5cpasswd",
        "/a\\..\\..\\etc\\passwd",
        "/%c0%ae%c0%ae/etc/passwd",
        "/index.html%00.txt",
        "/%zz",
    ] {
        let r = get(&edge, path, &[]);
        assert_eq!(r.status, 400, "{path}");
        assert!(
            !r.text().contains("root:") && !r.text().contains("SECRET"),
            "{path}"
        );
    }
    for path in [
        "/leak.txt",
        "/leakdir/secret.txt",
        "/.env",
        "/.git/config",
        "/%2egit/config",
    ] {
        let r = get(&edge, path, &[("Accept", "text/html")]);
        assert_eq!(r.status, 404, "{path}");
        assert!(
            !r.text().contains("SECRET") && !r.text().contains("PASSWORD"),
            "{path}"
        );
    }
    assert_eq!(
        get(&edge, "/alias.txt", &[]).text(),
        "fine",
        "symlinks inside the root are fine"
    );
}

#[test]
fn methods_and_header_limits() {
    let edge = start_edge(&[("WXEDGE_MAX_HEADER_BYTES", "4096")]);
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let r = request(&edge, m, "/index.html", &[], b"");
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    let big = "a".repeat(5000);
    assert_eq!(get(&edge, "/", &[("X-Big", &big)]).status, 431);
    assert_eq!(get(&edge, "/", &[("X-Small", "b")]).status, 200);
}

#[test]
fn mp_verify_from_dist_and_from_config() {
    // The fixture build lost its MP_verify file, as real builds do: configuration brings it back.
    let edge = start_edge(&[("WX_MP_VERIFY", "Ab12Cd34,zz99")]);
    for token in ["Ab12Cd34", "zz99"] {
        let r = get(&edge, &format!("/MP_verify_{token}.txt"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), token, "the body is exactly the token");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    assert_eq!(get(&edge, "/MP_verify_other.txt", &[]).status, 404);
    assert!(
        edge.stderr()
            .contains("mp_verify: /MP_verify_Ab12Cd34.txt (from config)"),
        "{}",
        edge.stderr()
    );

    let repo = start_edge(&[("WXEDGE_DIST", repo_dist().to_str().unwrap())]);
    let r = get(&repo, "/MP_verify_wxedgeSample.txt", &[]);
    assert_eq!(r.text(), "wxedgeSample");
    assert!(repo.stderr().contains("(from dist)"));
}

#[test]
fn malformed_requests_get_errors_and_never_take_the_edge_down() {
    let edge = start_edge(&[]);
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    let cases: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET http://evil.example/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        long_uri.into_bytes(),
        b"GET /%ff%fe%fd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nCookie: wxedge_session=\xff\xfe\x80; a=\x01\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /?code=\xff\xfe&state=\x80 HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=99999999999999999999999999-\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: \xff\r\nIf-None-Match: \"\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: close\r\n\r\nzz\r\n".to_vec(),
    ];
    for (i, c) in cases.iter().enumerate() {
        if let Ok(r) = raw(edge.addr(), c) {
            assert!(r.status >= 200 && r.status != 500, "case {i}: {}", r.status);
        }
    }
    let (status, _) = (get(&edge, "/_wxedge/healthz", &[]).status, ());
    assert_eq!(status, 200, "the edge survived");
    assert!(!edge.stderr().contains("panicked"), "{}", edge.stderr());
}

/// A big dist starts at once: the listener answers long before its text files are compressed
/// (in the background, at low priority); until a file's variants are made it is served as it
/// is, already with `Vary: Accept-Encoding`, and readiness counts the progress.
#[test]
fn a_big_dist_answers_at_once_and_is_compressed_in_the_background() {
    let dist = temp_dir("big-dist");
    std::fs::copy(fixture_dist().join("index.html"), dist.join("index.html")).unwrap();
    std::fs::create_dir_all(dist.join("assets")).unwrap();
    const FILES: usize = 12;
    // 512 KiB of JavaScript-like text per file: compressible, but work for brotli at level 10
    // (compressing them all before listening took seconds).
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for i in 0..FILES {
        let mut js = String::with_capacity(1 << 19);
        while js.len() < 1 << 19 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            js.push_str(&format!(
                "function f{:x}(a){{return a+{};}}\n",
                seed >> 40,
                seed % 997
            ));
        }
        std::fs::write(dist.join(format!("assets/chunk-{i:02}.js")), js).unwrap();
    }
    let dist_setting = dist.to_str().unwrap().to_string();
    // The edge's own temporary directory, to count the copies it makes there for sendfile(2).
    let tmp = temp_dir("big-dist-tmp");
    let tmp_setting = tmp.to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let edge = spawn_edge(
        &[("WXEDGE_DIST", &dist_setting), ("TMPDIR", &tmp_setting)],
        &[],
    );
    wait_healthy(&edge);
    let ready_after = started.elapsed();
    assert!(
        ready_after < std::time::Duration::from_secs(3),
        "{FILES} × 512 KiB of JS: the listener answered only after {ready_after:?}"
    );
    let r = raw(
        edge.addr(),
        b"GET /_wxedge/readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["ready"], true, "{v}");
    assert!(
        v["files_to_compress"].as_u64().unwrap() >= FILES as u64,
        "{v}"
    );
    // Whatever the progress, an answer is whole and says it varies by encoding.
    let last = format!("/assets/chunk-{:02}.js", FILES - 1);
    let r = get(&edge, &last, &[("Accept-Encoding", "br")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    let size = std::fs::metadata(dist.join(&last[1..])).unwrap().len() as usize;
    if r.header("content-encoding").is_none() {
        assert_eq!(r.body.len(), size);
    }
    wait_compressed(&edge);
    let r = get(&edge, &last, &[("Accept-Encoding", "br")]);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(r.body.len() < size / 2);
    let r = get(&edge, &last, &[("Accept-Encoding", "gzip")]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));

    // Every body of 16 KiB or more has exactly one unnamed copy for sendfile(2), made in the
    // background: the identity's is shared with the variants added later, not made again.
    let mut large = 0;
    for i in 0..FILES {
        let path = format!("/assets/chunk-{i:02}.js");
        for enc in ["identity", "gzip", "br"] {
            let r = get(&edge, &path, &[("Accept-Encoding", enc)]);
            assert_eq!(r.header("content-encoding").unwrap_or("identity"), enc);
            large += usize::from(r.body.len() >= 16 * 1024);
        }
    }
    assert!(
        large > FILES,
        "the chunks and some variants are large: {large}"
    );
    let copies = || {
        std::fs::read_dir(format!("/proc/{}/fd", edge.child.id()))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(&tmp))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while copies() < large && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(copies(), large, "one sendfile copy per large body");
    // Sent from those copies now: the same bytes as the file.
    let r = get(&edge, &last, &[]);
    assert_eq!(r.body, std::fs::read(dist.join(&last[1..])).unwrap());
}

/// `/_wxedge/readyz` as JSON.
fn readyz(edge: &EdgeProc) -> serde_json::Value {
    let r = raw(
        edge.addr(),
        b"GET /_wxedge/readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

/// Runs `wxedge compress` with these arguments; its exit status and stdout.
fn compress_command(args: &[&str]) -> (i32, String) {
    let mut all = vec!["compress"];
    all.extend_from_slice(args);
    let (mut cmd, _) = command(&[], &all);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut out).unwrap();
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &b[..], &mut out).unwrap();
    out
}

/// A dist with two text files worth compressing, a tiny one and an image.
fn text_dist(tag: &str) -> (std::path::PathBuf, String, String) {
    let dist = temp_dir(tag);
    std::fs::write(dist.join("index.html"), "<html></html>").unwrap();
    std::fs::create_dir_all(dist.join("assets")).unwrap();
    let js = "function hello(){return 'wxedge';}\n".repeat(300);
    let css = ".a{color:red}\n".repeat(300);
    std::fs::write(dist.join("assets/app-1a2b3c4D.js"), &js).unwrap();
    std::fs::write(dist.join("assets/app-1a2b3c4D.css"), &css).unwrap();
    std::fs::write(dist.join("tiny.css"), ".a{}").unwrap();
    std::fs::copy(
        fixture_dist().join("static/logo.png"),
        dist.join("logo.png"),
    )
    .unwrap();
    (dist, js, css)
}

/// `wxedge compress DIR` writes gzip and br twins (decoding to their file) and a manifest; run
/// again it writes nothing; the edge then starts with every variant and nothing to compress.
#[test]
fn compress_subcommand_writes_twins_the_edge_serves_at_once() {
    let (dist, js, css) = text_dist("ahead");
    let d = dist.to_str().unwrap();
    let (code, out) = compress_command(&[d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 twins written, 0 up to date"), "{out}");
    for (file, text) in [
        ("assets/app-1a2b3c4D.js", &js),
        ("assets/app-1a2b3c4D.css", &css),
    ] {
        let gz = std::fs::read(dist.join(format!("{file}.gz"))).unwrap();
        let br = std::fs::read(dist.join(format!("{file}.br"))).unwrap();
        assert_eq!(gunzip(&gz), text.as_bytes(), "{file}.gz");
        assert_eq!(unbrotli(&br), text.as_bytes(), "{file}.br");
    }
    assert!(
        !dist.join("tiny.css.gz").exists(),
        "below compress_min_bytes"
    );
    assert!(
        !dist.join("logo.png.gz").exists(),
        "images are not compressed"
    );
    assert!(dist.join(".wxedge-compressed").is_file());

    // Idempotent: nothing changed, nothing written.
    let (code, out) = compress_command(&[d]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 twins written, 4 up to date")
            && out.contains("manifest .wxedge-compressed unchanged"),
        "{out}"
    );
    // The configured dist is the default directory (`-c` honoured the same way).
    let (code, out) = {
        let (mut cmd, _) = command(&[("WXEDGE_DIST", d)], &["compress"]);
        let o = cmd.output().unwrap();
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 up to date"), "{out}");

    let edge = spawn_edge(&[("WXEDGE_DIST", d)], &[]);
    wait_healthy(&edge);
    let v = readyz(&edge);
    assert_eq!(v["files_to_compress"], 0, "nothing left to compress: {v}");
    assert_eq!(v["stale_twins_ignored"], 0, "{v}");
    let js_path = "/assets/app-1a2b3c4D.js";
    let b = get(&edge, js_path, &[("Accept-Encoding", "gzip, br")]);
    assert_eq!(b.header("content-encoding"), Some("br"));
    assert_eq!(
        b.body,
        std::fs::read(dist.join("assets/app-1a2b3c4D.js.br")).unwrap()
    );
    let g = get(&edge, js_path, &[("Accept-Encoding", "gzip")]);
    assert_eq!(gunzip(&g.body), js.as_bytes());
    assert_eq!(
        get(&edge, "/.wxedge-compressed", &[]).status,
        404,
        "the manifest is never served"
    );
}

/// A twin `wxedge compress` wrote is never served once its file has changed (a later `COPY
/// dist/` over the image's): the edge serves the file as it is, then compresses it anew.
#[test]
fn a_twin_older_than_its_file_is_never_served() {
    let (dist, js, _) = text_dist("stale");
    let d = dist.to_str().unwrap();
    assert_eq!(compress_command(&[d]).0, 0);
    // Same length, different bytes: only the content hash can tell.
    let js2 = js.replace("hello", "HELLO");
    assert_eq!(js2.len(), js.len());
    std::fs::write(dist.join("assets/app-1a2b3c4D.js"), &js2).unwrap();

    let edge = spawn_edge(&[("WXEDGE_DIST", d)], &[]);
    wait_healthy(&edge);
    let path = "/assets/app-1a2b3c4D.js";
    for enc in ["gzip", "br"] {
        let r = get(&edge, path, &[("Accept-Encoding", enc)]);
        let body = match r.header("content-encoding") {
            None => r.body.clone(),
            Some("gzip") => gunzip(&r.body),
            Some("br") => unbrotli(&r.body),
            Some(other) => panic!("{other}"),
        };
        assert_eq!(body, js2.as_bytes(), "{enc} before the background work");
    }
    let v = readyz(&edge);
    assert_eq!(v["stale_twins_ignored"], 2, "{v}");
    assert!(v["files_to_compress"].as_u64().unwrap() >= 1, "{v}");
    wait_compressed(&edge);
    let g = get(&edge, path, &[("Accept-Encoding", "gzip")]);
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&g.body), js2.as_bytes(), "compressed anew");
    let b = get(&edge, path, &[("Accept-Encoding", "br")]);
    assert_eq!(unbrotli(&b.body), js2.as_bytes());
    // The CSS did not change: its twins are still served.
    let css = get(
        &edge,
        "/assets/app-1a2b3c4D.css",
        &[("Accept-Encoding", "br")],
    );
    assert_eq!(
        css.body,
        std::fs::read(dist.join("assets/app-1a2b3c4D.css.br")).unwrap()
    );
    let log = edge.stderr();
    assert!(
        log.matches("made from an older version").count() == 1
            && log.contains("/assets/app-1a2b3c4D.js.gz"),
        "one line naming the stale twins:\n{log}"
    );

    // `wxedge compress` again makes them current.
    let (code, out) = compress_command(&[d]);
    assert_eq!(code, 0);
    assert!(out.contains("2 twins written, 2 up to date"), "{out}");
    assert_eq!(
        gunzip(&std::fs::read(dist.join("assets/app-1a2b3c4D.js.gz")).unwrap()),
        js2.as_bytes()
    );
}

/// Variants made in the background are kept in `compress_cache` by content: the next start
/// (a restart or an upgrade) serves them at once, with no background work, and counts the hits.
#[test]
fn the_compress_cache_is_reused_by_the_next_start() {
    let (dist, js, _) = text_dist("cache");
    let d = dist.to_str().unwrap().to_string();
    let cache = temp_dir("cache-dir").join("not-yet-made");
    let c = cache.to_str().unwrap().to_string();
    let metrics = format!("127.0.0.1:{}", free_port());
    let env = [
        ("WXEDGE_DIST", d.as_str()),
        ("WXEDGE_COMPRESS_CACHE", c.as_str()),
        ("WXEDGE_METRICS_LISTEN", metrics.as_str()),
    ];
    let path = "/assets/app-1a2b3c4D.js";

    let first = start_edge(&env);
    let v = readyz(&first);
    assert_eq!(v["files_to_compress"], 2, "{v}");
    assert_eq!(v["compress_cache"]["misses"], 4, "{v}");
    let made_br = get(&first, path, &[("Accept-Encoding", "br")]).body;
    // The cache is written before the work is counted done.
    assert_eq!(v["compress_cache"]["written"], 4, "{v}");
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 4, "two encodings of two files");
    drop(first);

    let second = spawn_edge(&env, &[]);
    wait_healthy(&second);
    let v = readyz(&second);
    assert_eq!(v["files_to_compress"], 0, "no background work: {v}");
    assert_eq!(v["compress_cache"]["hits"], 4, "{v}");
    assert_eq!(v["compress_cache"]["misses"], 0, "{v}");
    let b = get(&second, path, &[("Accept-Encoding", "br")]);
    assert_eq!(b.header("content-encoding"), Some("br"));
    assert_eq!(b.body, made_br, "the same variant, from the cache");
    assert_eq!(unbrotli(&b.body), js.as_bytes());
    let m = raw(
        metrics.parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .text();
    assert!(
        m.contains("wxedge_compress_cache_total{result=\"hit\"} 4"),
        "{m}"
    );
    assert!(second.stderr().contains("4 variants found, 0 to make"));
}

/// A compression cache that cannot be made or written never keeps the edge from starting or
/// from compressing: it says so once and goes on without it.
#[test]
fn an_unwritable_compress_cache_does_not_break_start_up() {
    let (dist, js, _) = text_dist("cache-ro");
    let blocker = temp_dir("cache-blocker").join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let cache = blocker.join("cache");
    let edge = start_edge(&[
        ("WXEDGE_DIST", dist.to_str().unwrap()),
        ("WXEDGE_COMPRESS_CACHE", cache.to_str().unwrap()),
    ]);
    let g = get(
        &edge,
        "/assets/app-1a2b3c4D.js",
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&g.body), js.as_bytes());
    let log = edge.stderr();
    assert_eq!(
        log.matches("compress_cache: cannot write").count(),
        1,
        "said once:\n{log}"
    );
}
