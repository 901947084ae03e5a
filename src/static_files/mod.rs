//! Static files: the dist tree served like nginx's `try_files $uri $uri/ /index.html`, but
//! with the fallback kept to navigations, in small steps: path → lookup → plan.

pub mod path;
pub mod respond;
pub mod tree;

use http::HeaderMap;

use crate::config::StaticSettings;
pub use path::{normalize, CleanPath, PathRefusal};
pub use respond::{Piece, Plan};
pub use tree::{Encoding, LoadError, Tree};

/// What the static layer decided for one request.
#[derive(Debug)]
pub enum Answer {
    File(Plan),
    /// 301 to this (relative) location.
    Redirect(String),
    Error(u16, &'static str),
}

pub struct StaticSite {
    pub tree: Tree,
    spa_fallback: bool,
    fallback_exclude: Vec<String>,
}

impl StaticSite {
    pub fn load(
        root: &std::path::Path,
        opts: &StaticSettings,
        mp_verify: &[String],
    ) -> Result<Self, LoadError> {
        Ok(StaticSite {
            tree: tree::load(root, opts, mp_verify)?,
            spa_fallback: opts.spa_fallback,
            fallback_exclude: opts.fallback_exclude.clone(),
        })
    }

    pub fn has_index(&self) -> bool {
        self.tree.files.contains_key("/index.html")
    }

    /// A page load the SPA's router should handle: no file extension, outside asset folders,
    /// and a client that takes HTML.
    fn is_navigation(&self, clean: &str, headers: &HeaderMap) -> bool {
        let last = clean.rsplit('/').next().unwrap_or("");
        if last.contains('.')
            || self
                .fallback_exclude
                .iter()
                .any(|p| format!("{clean}/").starts_with(p.as_str()))
        {
            return false;
        }
        match headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
        {
            None => true,
            Some(accept) => accept.contains("text/html") || accept.contains("*/*"),
        }
    }

    /// Serve `raw_path` (the request path without its query) for a GET or HEAD.
    pub fn answer(
        &self,
        raw_path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        head: bool,
    ) -> Answer {
        let clean = match path::normalize(raw_path) {
            Ok(c) => c,
            Err(PathRefusal::BadRequest(why)) => return Answer::Error(400, why),
            Err(PathRefusal::Hidden) => return Answer::Error(404, "not found"),
        };
        if let Some(file) = self.tree.files.get(&clean.path) {
            if !clean.trailing_slash {
                return Answer::File(respond::plan(file, headers, head));
            }
        }
        if self.tree.dirs.contains(&clean.path) {
            if !clean.trailing_slash && clean.path != "/" {
                // Relative to the host, so it stays right behind port mapping and proxies.
                let mut loc = format!("{}/", clean.path);
                if let Some(q) = query {
                    loc.push('?');
                    loc.push_str(q);
                }
                return Answer::Redirect(loc);
            }
            let index = if clean.path == "/" {
                "/index.html".to_string()
            } else {
                format!("{}/index.html", clean.path)
            };
            if let Some(file) = self.tree.files.get(&index) {
                return Answer::File(respond::plan(file, headers, head));
            }
        }
        if self.spa_fallback && self.is_navigation(&clean.path, headers) {
            if let Some(file) = self.tree.files.get("/index.html") {
                return Answer::File(respond::plan(file, headers, head));
            }
        }
        Answer::Error(404, "not found")
    }
}
