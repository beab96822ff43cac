//! Hot reload: one [`Rules`] handle holds the active [`RuleSet`] behind an `ArcSwap`.
//!
//! A reload (file change, SIGHUP, or `POST /v1/reload`) reads, validates and compiles the
//! whole directory off the request path, then swaps the new set in atomically. Each
//! request takes one snapshot with [`Rules::snapshot`] and is decided against it alone.
//! A reload that fails changes nothing: the old rules stay, the error is logged with its
//! location and counted. Limiter state lives in the store keyed by stable rule ids, so
//! unchanged rules keep their state across reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher;

use super::{RuleError, RuleSet};
use crate::metrics::Metrics;

/// Where rules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory of `*.toml` files.
    Dir(PathBuf),
    /// The defaults compiled into the binary.
    Embedded,
}

impl Source {
    fn load(&self) -> Result<RuleSet, Vec<RuleError>> {
        match self {
            Source::Dir(d) => RuleSet::load_dir(d),
            Source::Embedded => RuleSet::embedded(),
        }
    }
}

/// The active rules and how to reload them.
#[derive(Debug)]
pub struct Rules {
    /// The active set.
    current: ArcSwap<RuleSet>,
    /// Where to reload from.
    source: Source,
    /// The last generation handed out.
    generation: AtomicU64,
    /// Serializes reloads, so two at once cannot swap out of order.
    reloading: Mutex<()>,
    /// Errors of the last failed reload (cleared by a successful one).
    last_errors: Mutex<Vec<RuleError>>,
    /// Where reload results are counted.
    metrics: Arc<Metrics>,
}

impl Rules {
    /// Loads the first rule set; fails if it has any mistake.
    pub fn load(source: Source, metrics: Arc<Metrics>) -> Result<Rules, Vec<RuleError>> {
        let mut set = source.load()?;
        set.generation = 1;
        warn_if_empty(&set);
        publish(&metrics, &set);
        succeeded(&metrics);
        Ok(Rules {
            current: ArcSwap::from_pointee(set),
            source,
            generation: AtomicU64::new(1),
            reloading: Mutex::new(()),
            last_errors: Mutex::new(Vec::new()),
            metrics,
        })
    }

    /// The rule set to decide one request against.
    pub fn snapshot(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// Where the rules come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The errors of the last failed reload, if the last reload failed.
    pub fn last_errors(&self) -> Vec<RuleError> {
        self.last_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Re-reads the source; on success swaps the new set in and returns its generation.
    /// Blocking (file I/O): call from a blocking thread.
    pub fn reload(&self) -> Result<u64, Vec<RuleError>> {
        let _serial = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        match self.source.load() {
            Ok(mut set) => {
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                set.generation = generation;
                warn_if_empty(&set);
                publish(&self.metrics, &set);
                self.current.store(Arc::new(set));
                succeeded(&self.metrics);
                if let Ok(mut e) = self.last_errors.lock() {
                    e.clear();
                }
                tracing::info!(generation, "rules reloaded");
                Ok(generation)
            }
            Err(errors) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                self.metrics.rules_last_reload_successful.set(0);
                for e in &errors {
                    tracing::error!(file = %e.file, line = e.line, rule = %e.rule, "rule reload failed, keeping the active rules: {}", e.message);
                }
                if let Ok(mut last) = self.last_errors.lock() {
                    last.clone_from(&errors);
                }
                Err(errors)
            }
        }
    }

    /// Reloads on a blocking thread.
    pub async fn reload_async(self: &Arc<Self>) -> Result<u64, Vec<RuleError>> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.reload())
            .await
            .unwrap_or_else(|_| Err(Vec::new()))
    }
}

/// Counts a successful load and records when it happened (wall-clock time, for
/// dashboards and alerts on rules that stopped reloading).
fn succeeded(metrics: &Metrics) {
    metrics.reloads.with_label_values(&["success"]).inc();
    metrics.rules_last_reload_successful.set(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics.rules_last_reload_success_timestamp.set(now);
}

/// A set without a single rule is valid (a first install, a benchmark), but it is more
/// often a volume that was not mounted or files not named `*.toml`: said where it shows.
fn warn_if_empty(set: &RuleSet) {
    if set.summaries.is_empty() {
        tracing::warn!(source = %set.source, "no rules loaded (no rule in any *.toml file): every request is forwarded unchecked");
    }
}

fn publish(metrics: &Metrics, set: &RuleSet) {
    metrics
        .rules_generation
        .set(i64::try_from(set.generation).unwrap_or(i64::MAX));
    metrics.rules_active.reset();
    for s in &set.summaries {
        metrics
            .rules_active
            .with_label_values(&[s.kind, s.mode])
            .inc();
    }
}

/// A running watch of a rules directory; dropping it stops watching.
pub struct Watch {
    /// Shared with the reload task, which re-attaches the directory's watch before each
    /// reload; the task holds it weakly, so dropping this ends it.
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

/// Watches a rules directory and reloads after changes settle for `debounce`.
///
/// Editors that save through a rename and Kubernetes ConfigMap updates (a `..data`
/// symlink swap) both show up as events on the directory itself. The directory's parent
/// is watched too, for events on the directory's own name: a directory deleted and made
/// again, another one renamed into its place, or a `rules` symlink switched to another
/// target. An inotify watch follows the directory it was made on, not the name, so the
/// directory's watch is made again before every reload.
pub fn watch(rules: Arc<Rules>, dir: &Path, debounce: Duration) -> notify::Result<Watch> {
    // Absolute (symlinks kept) so that event paths, which notify builds from the watched
    // paths, compare with it.
    let dir = std::path::absolute(dir).map_err(notify::Error::io)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let ours = dir.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            // The parent's other entries (a log file next to the rules, say) are not ours;
            // an event without paths (an overflowed queue) may be.
            let relevant = ev.paths.is_empty()
                || ev
                    .paths
                    .iter()
                    .any(|p| *p == ours || p.parent() == Some(ours.as_path()));
            if !ev.kind.is_access() && relevant {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    if let Some(parent) = dir.parent() {
        if let Err(e) = watcher.watch(parent, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} ({e}): if {} is replaced or deleted, reload with SIGHUP or POST /v1/reload",
                parent.display(),
                dir.display()
            );
        }
    }
    let watcher = Arc::new(Mutex::new(watcher));
    let weak = Arc::downgrade(&watcher);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event has come for `debounce`.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(watcher) = weak.upgrade() else {
                return;
            };
            // On the directory there now, before reading it: a change made after this
            // shows up as a new event. It fails while there is no directory (the reload
            // then fails too, and says so); the parent's watch sees it come back.
            if let Ok(mut w) = watcher.lock() {
                let _ = w.unwatch(&dir);
                let _ = w.watch(&dir, notify::RecursiveMode::NonRecursive);
            }
            drop(watcher);
            let _ = rules.reload_async().await;
        }
    });
    Ok(Watch { _watcher: watcher })
}
