// The guide: the pages of `docs/` as rustdoc modules, so docs.rs shows
// them and `cargo test --doc` runs every code block in them (as clap's
// `_tutorial` and axum's guides do).
//
// Links between the pages are Markdown reference links written for GitHub
// (`[delivery]` with `[delivery]: delivery.md` at the end of the page).
// Each module below puts `src/guide/links.md` *before* its page, whose
// definitions (`[delivery]: crate::guide::delivery`) win because Markdown
// uses the first definition of a label; rustdoc checks them as intra-doc
// links, so a broken one fails `cargo doc` with `-D warnings`. The crate's
// front page (`README.md`) is wired the same way in `src/lib.rs`.
//
// Once an integration's page has code that needs its cargo feature, include
// it with `#![cfg_attr(feature = "x", doc = include_str!(..))]` and a
// one-line `#![cfg_attr(not(feature = "x"), doc = "...")]` pointer, so its
// module, and every link to it, exists in every build and its doctests run
// where the feature is on.
#![doc = include_str!("guide/links.md")]
#![doc = include_str!("../docs/README.md")]

pub mod policies {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/policies.md")]
}

pub mod ordering {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/ordering.md")]
}

pub mod guarantees {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/guarantees.md")]
}

pub mod delivery {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/delivery.md")]
}

pub mod architecture {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/architecture.md")]
}

pub mod tower {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/tower.md")]
}

pub mod benchmarks {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/benchmarks.md")]

    /// Publish latency while the consumer does real work.
    pub mod consumer_work {
        #![doc = include_str!("guide/links.md")]
        #![doc = include_str!("../docs/benchmarks-consumer-work.md")]
    }
}

pub mod verification {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/verification.md")]
}

pub mod gpu {
    #![doc = include_str!("guide/links.md")]
    #![doc = include_str!("../docs/gpu.md")]
}

pub mod nats {
    #![doc = include_str!("guide/links.md")]
    #![cfg_attr(feature = "nats", doc = include_str!("../docs/nats.md"))]
    #![cfg_attr(
        not(feature = "nats"),
        doc = "Ship batches to NATS JetStream and read them back: build with the cargo feature `nats` (docs/nats.md)."
    )]
}

pub mod metrics {
    #![doc = include_str!("guide/links.md")]
    #![cfg_attr(feature = "metrics", doc = include_str!("../docs/metrics.md"))]
    #![cfg_attr(
        not(feature = "metrics"),
        doc = "`counter!`/`gauge!`/`histogram!` folded per thread and window, and ringfold's health as metrics: build with the cargo feature `metrics` (docs/metrics.md)."
    )]
}

pub mod tracing {
    #![doc = include_str!("guide/links.md")]
    #![cfg_attr(feature = "tracing", doc = include_str!("../docs/tracing.md"))]
    #![cfg_attr(
        not(feature = "tracing"),
        doc = "Logs through `tracing` into ringfold and a JSON-lines file: build with the cargo feature `tracing` (docs/tracing.md)."
    )]
}

pub mod ws {
    #![doc = include_str!("guide/links.md")]
    #![cfg_attr(feature = "ws", doc = include_str!("../docs/ws.md"))]
    #![cfg_attr(
        not(feature = "ws"),
        doc = "Serve batches to WebSocket clients and tower's live page: build with the cargo feature `ws` (docs/ws.md)."
    )]
}

#[cfg(test)]
mod tests {
    /// The README's quick start is `examples/quickstart.rs`, word for word:
    /// the doctest runs the one, `cargo test --all-targets` builds the other.
    #[test]
    fn readme_quick_start_is_the_example() {
        let readme = include_str!("../README.md");
        let example = include_str!("../examples/quickstart.rs");
        let start = readme
            .find("## Quick start")
            .expect("README has a Quick start section");
        let block = readme[start..]
            .split("```rust\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .expect("the Quick start has a rust code block");
        assert_eq!(block.trim_end(), example.trim_end());
    }

    /// Every link definition of README.md and of the guide's pages points
    /// at a file that exists (the links GitHub follows; rustdoc checks its
    /// own through `links.md`).
    #[test]
    fn markdown_links_resolve() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut pages = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).expect("docs/ exists") {
            let path = entry.expect("docs/ is readable").path();
            if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
        let mut links = 0;
        for page in &pages {
            let text = std::fs::read_to_string(page).expect("page is readable");
            let dir = page.parent().expect("a page has a folder");
            for line in text.lines() {
                let Some((_, target)) = line.strip_prefix('[').and_then(|l| l.split_once("]: "))
                else {
                    continue;
                };
                let target = target.trim();
                if target.contains("://") {
                    continue;
                }
                let file = target.split('#').next().unwrap_or(target);
                assert!(
                    dir.join(file).exists(),
                    "{} links to {target}, which is missing",
                    page.display()
                );
                links += 1;
            }
        }
        assert!(
            links > 20,
            "only {links} links found: is the scheme still reference links?"
        );
    }
}
