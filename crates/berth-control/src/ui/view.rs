//! The console's page frame and the small pieces every page uses: relative times with the exact
//! value on hover, sizes, state badges, the action forms with their CSRF token.
//!
//! **Invariant:** every value reaches the HTML through maud's escaping; `PreEscaped` is used
//! only for markup this module builds itself (the SVG charts), never for stored text.

use axum::response::Html;
use berth_core::time::Timestamp;
use maud::{html, Markup, DOCTYPE};

use super::session::Console;

/// Which section of the console a page belongs to (the navigation marks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Workspaces and their detail.
    Workspaces,
    /// Drains.
    Drains,
    /// Volume GC.
    Gc,
    /// The object store.
    Store,
}

/// A whole page: navigation, the live region `main`, and the assets (no inline script or
/// style, so the CSP forbids both). `live` names the events that refresh `main`: `all`, or
/// `owner:OWNER`.
pub fn page(console: &Console, section: Section, title: &str, live: &str, body: Markup) -> Html<String> {
    let nav = [
        (Section::Workspaces, "/ui/workspaces", "Workspaces", "w"),
        (Section::Drains, "/ui/drains", "Drains", "d"),
        (Section::Gc, "/ui/gc", "GC", "g"),
        (Section::Store, "/ui/store", "Store", "s"),
    ];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "berth" }
                    nav aria-label="Sections" {
                        @for (s, href, label, key) in nav {
                            a href=(href) accesskey=(key) aria-current=[(s == section).then_some("page")] { (label) }
                        }
                    }
                    span.who {
                        @if console.can_act() { span.badge.admin { "admin" } } @else { span.badge.viewer title="read-only: no action is offered" { "viewer" } }
                        form.inline method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(console.csrf);
                            button.link type="submit" { "Log out" }
                        }
                    }
                    span #live-status .live-off title="live updates" { "●" }
                }
                main #main data-live=(live) data-now=(console.now.secs()) { (body) }
            }
        }
    };
    Html(markup.into_string())
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · berth" }
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

/// A page outside a session (login, an error before login).
pub fn bare(title: &str, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare { main #main { (body) } }
        }
    };
    Html(markup.into_string())
}

/// The login page, with an error when the last try failed.
pub fn login_page(error: Option<&str>) -> Html<String> {
    bare(
        "Log in",
        html! {
            h1 { "berth console" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.card method="post" action="/ui/login" {
                label for="token" { "Admin or viewer token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
            p.hint { "The admin token is in the server's data dir (admin-token) unless --admin-token-file names it; viewer tokens come from --viewer-token-file." }
        },
    )
}

/// A page that only says something (403, 404, a bad form).
pub fn message_page(title: &str, message: &str) -> Html<String> {
    bare(
        title,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/ui/workspaces" { "Back to the workspaces" } }
        },
    )
}

/// A time as text relative to `now` ("3 min ago"), the exact UTC value on hover; the script
/// keeps the relative text current.
pub fn ago(t: Timestamp, now: Timestamp) -> Markup {
    html! {
        time datetime=(t.to_string()) title=(t.to_string()) data-ts=(t.secs()) { (relative(now.secs() - t.secs())) }
    }
}

/// A time ahead of `now` ("in 4 min"), the exact value on hover.
pub fn until(t: Timestamp, now: Timestamp) -> Markup {
    html! {
        time datetime=(t.to_string()) title=(t.to_string()) data-ts=(t.secs()) { (relative(now.secs() - t.secs())) }
    }
}

/// "42 s ago", "3 min ago", "5 h ago", "2 d ago"; negative: "in ...".
pub fn relative(secs: i64) -> String {
    let (n, future) = if secs < 0 { (-secs, true) } else { (secs, false) };
    let text = if n < 120 {
        format!("{n} s")
    } else if n < 7200 {
        format!("{} min", n / 60)
    } else if n < 172_800 {
        format!("{} h", n / 3600)
    } else {
        format!("{} d", n / 86_400)
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Seconds since the last durable snapshot, ticking in the browser (`data-since`).
pub fn since_snapshot(at: Option<Timestamp>, now: Timestamp) -> Markup {
    match at {
        Some(t) => html! {
            span.since data-since=(t.secs()) title=(format!("last durable snapshot {t}")) { (now.secs().saturating_sub(t.secs()).max(0)) " s" }
        },
        None => html! { span.muted title="no snapshot published yet" { "never" } },
    }
}

/// Bytes as KiB, MiB, GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A hidden CSRF field for an action form.
pub fn csrf(console: &Console) -> Markup {
    html! { input type="hidden" name="csrf" value=(console.csrf); }
}

/// A link to an action's confirmation page, shown only to a user who may act.
pub fn action_link(console: &Console, href: &str, label: &str, danger: bool) -> Markup {
    html! {
        @if console.can_act() {
            a.button.danger[danger] href=(href) { (label) }
        }
    }
}

/// A confirmation page: what will happen, then the form that does it.
pub fn confirm(
    console: &Console,
    section: Section,
    title: &str,
    consequences: &[String],
    form: Markup,
    cancel: &str,
) -> Html<String> {
    page(
        console,
        section,
        title,
        "",
        html! {
            h1 { (title) }
            section.card.confirm aria-labelledby="what" {
                h2 #what { "This will:" }
                ul { @for c in consequences { li { (c) } } }
                (form)
                p { a href=(cancel) { "Cancel" } }
            }
        },
    )
}

/// The percent-encoding of a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_and_sizes_read_as_people_say_them() {
        for (secs, want) in
            [(5, "5 s ago"), (119, "119 s ago"), (600, "10 min ago"), (7200, "2 h ago"), (-300, "in 5 min")]
        {
            assert_eq!(relative(secs), want);
        }
        assert_eq!(relative(3 * 86_400), "3 d ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(10 << 30), "10.0 GiB");
        assert_eq!(enc("agent:42 <x>"), "agent%3A42%20%3Cx%3E");
    }
}
