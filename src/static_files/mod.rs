//! Static files: the dist tree served like nginx's `try_files $uri $uri/ /index.html`, but
//! with the fallback kept to navigations, in small steps: path → lookup → plan.

pub mod acme;
pub mod compress;
pub mod model;
pub mod path;
pub mod pieces;
pub mod precompress;
pub mod respond;
pub mod tree;

use crate::config::StaticSettings;
pub use model::Encoding;
pub use path::PathRefusal;
pub use respond::{Conditions, Piece, Plan, Quick};
pub use tree::{LoadError, Tree};

/// Where a request path leads, before any header but `Accept` is looked at.
enum Resolved<'a> {
    File(&'a model::StaticFile),
    Redirect(String),
    Error(u16, &'static str),
}

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
    fn is_navigation(&self, clean: &str, accept: Option<&str>) -> bool {
        let last = clean.rsplit('/').next().unwrap_or("");
        // `p` (like `/assets/`) is a prefix of `clean + "/"`, checked without building that string.
        if last.contains('.')
            || self
                .fallback_exclude
                .iter()
                .any(|p| clean.starts_with(p.as_str()) || p.strip_suffix('/') == Some(clean))
        {
            return false;
        }
        accept.is_none_or(|a| a.contains("text/html") || a.contains("*/*"))
    }

    /// `try_files $uri $uri/ /index.html`, the fallback kept to navigations.
    fn resolve(&self, raw_path: &str, query: Option<&str>, accept: Option<&str>) -> Resolved<'_> {
        let clean = match path::normalize(raw_path) {
            Ok(c) => c,
            Err(PathRefusal::BadRequest(why)) => return Resolved::Error(400, why),
            Err(PathRefusal::Hidden) => return Resolved::Error(404, "not found"),
        };
        if let Some(file) = self.tree.files.get(&clean.path) {
            if !clean.trailing_slash {
                return Resolved::File(file);
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
                return Resolved::Redirect(loc);
            }
            let index = if clean.path == "/" {
                "/index.html".to_string()
            } else {
                format!("{}/index.html", clean.path)
            };
            if let Some(file) = self.tree.files.get(&index) {
                return Resolved::File(file);
            }
        }
        if self.spa_fallback && self.is_navigation(&clean.path, accept) {
            if let Some(file) = self.tree.files.get("/index.html") {
                return Resolved::File(file);
            }
        }
        Resolved::Error(404, "not found")
    }

    /// Serve `raw_path` (the request path without its query) for a GET or HEAD.
    pub fn answer(
        &self,
        raw_path: &str,
        query: Option<&str>,
        c: &Conditions,
        head: bool,
    ) -> Answer {
        match self.resolve(raw_path, query, c.accept) {
            Resolved::File(file) => Answer::File(respond::plan(file, c, head)),
            Resolved::Redirect(loc) => Answer::Redirect(loc),
            Resolved::Error(status, why) => Answer::Error(status, why),
        }
    }

    /// The prebuilt answer for the common case (a whole file or a 304), or `None`: then
    /// [`Self::answer`] decides.
    pub fn quick(&self, raw_path: &str, c: &Conditions, head: bool) -> Option<Quick<'_>> {
        match self.resolve(raw_path, None, c.accept) {
            Resolved::File(file) => respond::quick(file, c, head),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigation_excludes_asset_folders_with_or_without_the_slash() {
        let site = StaticSite {
            tree: Tree::default(),
            spa_fallback: true,
            fallback_exclude: vec!["/assets/".into(), "/static".into()],
        };
        let html = Some("text/html,*/*;q=0.8");
        for (path, navigation) in [
            ("/pages/index/index", true),
            ("/assets", false),
            ("/assets/x/y", false),
            ("/assetsx", true),
            ("/static", false),
            ("/static/img", false),
            ("/staticky", false), // a prefix without the slash matches like nginx's `location /static`
            ("/pages/a.js", false),
        ] {
            assert_eq!(site.is_navigation(path, html), navigation, "{path}");
        }
        assert!(!site.is_navigation("/pages/index", Some("application/json")));
        assert!(site.is_navigation("/pages/index", None));
    }
}
