//! Path globs, as `correlation.config_change.paths` writes them: absolute paths whose segments
//! may hold `*` (any characters but `/`) and `?` (one character but `/`), and whose whole
//! segments may be `**` (any number of segments, none included). `/etc/**` is everything under
//! `/etc`; `/srv/*/config.yaml` is `config.yaml` one directory below `/srv`.

/// Why a glob is refused.
pub(crate) fn check(glob: &str) -> Result<(), String> {
    if !glob.starts_with('/') {
        return Err(format!(
            "must be an absolute path glob (start with /), got `{glob}`"
        ));
    }
    if let Some(segment) = glob
        .split('/')
        .skip(1)
        .find(|segment| segment.contains("**") && *segment != "**")
    {
        return Err(format!(
            "`**` must be a whole path segment (as in /etc/**/x), got `{segment}` in `{glob}`"
        ));
    }
    Ok(())
}

/// Whether `path` matches `glob` (checked by [`check`]). A relative path matches no glob.
pub fn glob_matches(glob: &str, path: &str) -> bool {
    let (Some(pattern), Some(path)) = (glob.strip_prefix('/'), path.strip_prefix('/')) else {
        return false;
    };
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    segments(&pattern, &path)
}

fn segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, more)) => {
                segment_matches(first.as_bytes(), segment.as_bytes()) && segments(rest, more)
            }
            None => false,
        },
    }
}

fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| segment_matches(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && segment_matches(rest, &text[1..]),
        Some((byte, rest)) => text.first() == Some(byte) && segment_matches(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_segments() {
        let yes = [
            ("/etc/**", "/etc/nginx/nginx.conf"),
            ("/etc/**", "/etc/hosts"),
            ("/etc/**", "/etc"),
            ("/srv/*/config.yaml", "/srv/shop/config.yaml"),
            ("/etc/**/*.yaml", "/etc/a/b/backend.yaml"),
            ("/etc/**/*.yaml", "/etc/backend.yaml"),
            ("/tmp/run-?/etc/**", "/tmp/run-7/etc/backend.yaml"),
            ("/etc/hosts", "/etc/hosts"),
        ];
        for (glob, path) in yes {
            assert!(check(glob).is_ok(), "{glob}");
            assert!(glob_matches(glob, path), "{glob} should match {path}");
        }
        let no = [
            ("/etc/**", "/etcetera/x"),
            ("/etc/**", "etc/hosts"),
            ("/etc/**", "/var/etc/hosts"),
            ("/srv/*/config.yaml", "/srv/a/b/config.yaml"),
            ("/etc/**/*.yaml", "/etc/backend.yml"),
            ("/tmp/run-?/etc/**", "/tmp/run-17/etc/backend.yaml"),
            ("/etc/hosts", "/etc/hosts.new"),
        ];
        for (glob, path) in no {
            assert!(!glob_matches(glob, path), "{glob} should not match {path}");
        }
    }

    #[test]
    fn bad_globs_say_why() {
        assert_eq!(
            check("etc/**").unwrap_err(),
            "must be an absolute path glob (start with /), got `etc/**`"
        );
        assert_eq!(
            check("/etc/a**").unwrap_err(),
            "`**` must be a whole path segment (as in /etc/**/x), got `a**` in `/etc/a**`"
        );
    }
}
