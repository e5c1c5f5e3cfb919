//! Proxies: a listener per proxy, its connections, its toxics; and the collection of them.

use crate::link::{self, Installed, ToxicList};
use crate::toxic::{as_object, Toxic};
use crate::ChaosError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a proxy is asked to be: the body of `POST /proxies` and one entry of a populate
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// Unique name.
    pub name: String,
    /// Where it listens. Default: `127.0.0.1:0` (loopback, a free port).
    pub listen: String,
    /// Where it connects: `host:port`.
    pub upstream: String,
    /// Whether it listens now. Default: true.
    pub enabled: bool,
}

impl ProxySpec {
    /// A spec with the defaults: loopback on a free port, enabled.
    pub fn new(name: impl Into<String>, upstream: impl Into<String>) -> Self {
        ProxySpec {
            name: name.into(),
            listen: "127.0.0.1:0".into(),
            upstream: upstream.into(),
            enabled: true,
        }
    }

    /// Parses the API's JSON; errors name the field.
    pub fn from_json(body: &Value) -> Result<Self, ChaosError> {
        let object = as_object(body)?;
        let name = string_field(object, "name")?.unwrap_or_default();
        if name.is_empty() {
            return Err(ChaosError::MissingField("name"));
        }
        let upstream = string_field(object, "upstream")?.unwrap_or_default();
        if upstream.is_empty() {
            return Err(ChaosError::MissingField("upstream"));
        }
        let listen = string_field(object, "listen")?
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let enabled = bool_field(object, "enabled")?.unwrap_or(true);
        Ok(ProxySpec {
            name,
            listen,
            upstream,
            enabled,
        })
    }
}

fn string_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, ChaosError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ChaosError::BadRequest(format!(
            "{field} must be a string (got {other})"
        ))),
    }
}

fn bool_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<bool>, ChaosError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ChaosError::BadRequest(format!(
            "{field} must be true or false (got {other})"
        ))),
    }
}

/// A proxy as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyInfo {
    /// Its name.
    pub name: String,
    /// The address it listens on (the real port once it has listened on port 0).
    pub listen: String,
    /// Where it connects.
    pub upstream: String,
    /// Whether it listens.
    pub enabled: bool,
    /// Its toxics, in the order they apply.
    pub toxics: Vec<Toxic>,
}

impl ProxyInfo {
    /// The API's JSON for this proxy.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": self.toxics.iter().map(Toxic::to_json).collect::<Vec<_>>(),
        })
    }
}

struct Proxy {
    name: String,
    state: Mutex<State>,
    /// Every connection reads the list from here at each chunk.
    toxics: watch::Sender<ToxicList>,
}

struct State {
    listen: String,
    upstream: String,
    /// `Some` while listening: cancelling it stops the listener and every connection.
    running: Option<CancellationToken>,
}

impl Proxy {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change to `State` is a plain assignment: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self) -> ProxyInfo {
        let state = self.state();
        ProxyInfo {
            name: self.name.clone(),
            listen: state.listen.clone(),
            upstream: state.upstream.clone(),
            enabled: state.running.is_some(),
            toxics: self
                .toxics
                .borrow()
                .iter()
                .map(|t| t.toxic.clone())
                .collect(),
        }
    }

    /// Starts listening (a no-op when already listening).
    fn start(&self, state: &mut State) -> Result<(), ChaosError> {
        if state.running.is_some() {
            return Ok(());
        }
        let listen_error = |source| ChaosError::Listen {
            address: state.listen.clone(),
            source,
        };
        let listener = std::net::TcpListener::bind(state.listen.as_str()).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let listener = TcpListener::from_std(listener).map_err(listen_error)?;
        if let Ok(addr) = listener.local_addr() {
            // Port 0 picked a free port: report (and reuse on restart) the real one.
            state.listen = addr.to_string();
        }
        let cancel = CancellationToken::new();
        tokio::spawn(accept(
            listener,
            state.upstream.clone(),
            self.toxics.subscribe(),
            cancel.clone(),
        ));
        state.running = Some(cancel);
        Ok(())
    }

    /// Stops listening and closes every connection.
    fn stop(&self, state: &mut State) {
        if let Some(cancel) = state.running.take() {
            cancel.cancel();
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: String,
    toxics: watch::Receiver<ToxicList>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(link::run(client, upstream.clone(), toxics.clone(), cancel.child_token()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "chaos: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// The chaos proxy: a set of named TCP proxies with toxics, and the Toxiproxy-compatible
/// HTTP API over them ([`router`](Self::router), [`serve`](Self::serve)).
///
/// Clones share the same proxies.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use stormwall_chaos::{ChaosServer, ProxySpec, Toxic, ToxicKind};
/// let chaos = ChaosServer::new();
/// let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let proxy = chaos
///     .create(ProxySpec::new("db", upstream.local_addr().unwrap().to_string()))
///     .await
///     .unwrap();
/// chaos.add_toxic("db", Toxic::new(ToxicKind::Latency { latency: 100, jitter: 0 })).unwrap();
/// assert_eq!(chaos.toxics("db").unwrap().len(), 1);
/// assert!(proxy.listen.starts_with("127.0.0.1:"));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ChaosServer {
    proxies: Arc<Mutex<BTreeMap<String, Arc<Proxy>>>>,
    /// Numbers toxic versions (see `link::Installed`).
    next_toxic_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for ChaosServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosServer")
            .field("proxies", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ChaosServer {
    /// A server with no proxies.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Proxy>>> {
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Result<Arc<Proxy>, ChaosError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or(ChaosError::ProxyNotFound)
    }

    /// Creates a proxy and (if enabled) starts listening. Fails if the name exists, the
    /// upstream does not resolve or the address cannot be listened on.
    pub async fn create(&self, spec: ProxySpec) -> Result<ProxyInfo, ChaosError> {
        resolve("upstream", &spec.upstream).await?;
        let mut proxies = self.lock();
        if proxies.contains_key(&spec.name) {
            return Err(ChaosError::ProxyExists);
        }
        let proxy = Arc::new(Proxy {
            name: spec.name.clone(),
            state: Mutex::new(State {
                listen: spec.listen,
                upstream: spec.upstream,
                running: None,
            }),
            toxics: watch::Sender::new(Arc::new(Vec::new())),
        });
        if spec.enabled {
            proxy.start(&mut proxy.state())?;
        }
        proxies.insert(spec.name, Arc::clone(&proxy));
        drop(proxies);
        Ok(proxy.info())
    }

    /// Every proxy, by name.
    pub fn proxies(&self) -> Vec<ProxyInfo> {
        self.lock().values().map(|p| p.info()).collect()
    }

    /// One proxy.
    pub fn proxy(&self, name: &str) -> Result<ProxyInfo, ChaosError> {
        Ok(self.get(name)?.info())
    }

    /// Changes `listen`, `upstream` and `enabled` where `body` has them; a proxy whose
    /// address changed while listening restarts on the new one.
    pub async fn update(&self, name: &str, body: &Value) -> Result<ProxyInfo, ChaosError> {
        let proxy = self.get(name)?;
        let object = as_object(body)?;
        let listen = string_field(object, "listen")?.filter(|l| !l.is_empty());
        let upstream = string_field(object, "upstream")?.filter(|u| !u.is_empty());
        let enabled = bool_field(object, "enabled")?;
        if let Some(upstream) = &upstream {
            resolve("upstream", upstream).await?;
        }
        {
            let mut state = proxy.state();
            let was_running = state.running.is_some();
            let moved = listen.as_ref().is_some_and(|l| *l != state.listen)
                || upstream.as_ref().is_some_and(|u| *u != state.upstream);
            let run = enabled.unwrap_or(was_running);
            if moved || !run {
                proxy.stop(&mut state);
            }
            let previous = (state.listen.clone(), state.upstream.clone());
            if let Some(listen) = listen {
                state.listen = listen;
            }
            if let Some(upstream) = upstream {
                state.upstream = upstream;
            }
            if run {
                if let Err(e) = proxy.start(&mut state) {
                    // Keep serving where it was: a failed move loses nothing.
                    (state.listen, state.upstream) = previous;
                    if was_running {
                        let _ = proxy.start(&mut state);
                    }
                    return Err(e);
                }
            }
        }
        Ok(proxy.info())
    }

    /// Stops a proxy (closing its listener and connections) and forgets it.
    pub fn delete(&self, name: &str) -> Result<(), ChaosError> {
        let proxy = self.lock().remove(name).ok_or(ChaosError::ProxyNotFound)?;
        proxy.stop(&mut proxy.state());
        Ok(())
    }

    /// Creates or replaces each proxy of `specs` (a proxy whose listen or upstream differ
    /// is recreated; an identical one is left as it is, enabled as asked). Stops at the
    /// first error, returning it with the proxies done so far.
    pub async fn populate(
        &self,
        specs: Vec<ProxySpec>,
    ) -> Result<Vec<ProxyInfo>, (ChaosError, Vec<ProxyInfo>)> {
        let mut done = Vec::with_capacity(specs.len());
        for spec in specs {
            let result = match self.proxy(&spec.name) {
                Ok(existing)
                    if existing.upstream == spec.upstream
                        && (existing.listen == spec.listen || spec.listen.ends_with(":0")) =>
                {
                    self.update(&spec.name, &json!({ "enabled": spec.enabled }))
                        .await
                }
                Ok(_) => {
                    let _ = self.delete(&spec.name);
                    self.create(spec).await
                }
                Err(_) => self.create(spec).await,
            };
            match result {
                Ok(info) => done.push(info),
                Err(e) => return Err((e, done)),
            }
        }
        Ok(done)
    }

    /// Enables every proxy and removes every toxic.
    pub fn reset(&self) -> Result<(), ChaosError> {
        let proxies: Vec<_> = self.lock().values().cloned().collect();
        for proxy in proxies {
            proxy.toxics.send_replace(Arc::new(Vec::new()));
            proxy.start(&mut proxy.state())?;
        }
        Ok(())
    }

    /// The toxics of a proxy, in order.
    pub fn toxics(&self, proxy: &str) -> Result<Vec<Toxic>, ChaosError> {
        Ok(self.get(proxy)?.info().toxics)
    }

    /// One toxic of a proxy.
    pub fn toxic(&self, proxy: &str, name: &str) -> Result<Toxic, ChaosError> {
        self.toxics(proxy)?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or(ChaosError::ToxicNotFound)
    }

    /// Adds a toxic after the proxy's others; live connections apply it from their next
    /// chunk.
    pub fn add_toxic(&self, proxy: &str, toxic: Toxic) -> Result<Toxic, ChaosError> {
        let proxy = self.get(proxy)?;
        let id = self.next_toxic_id.fetch_add(1, Ordering::Relaxed);
        let mut result = Ok(());
        proxy.toxics.send_if_modified(|list| {
            if list.iter().any(|t| t.toxic.name == toxic.name) {
                result = Err(ChaosError::ToxicExists);
                return false;
            }
            let mut next = Vec::clone(list);
            next.push(Arc::new(Installed {
                id,
                toxic: toxic.clone(),
            }));
            *list = Arc::new(next);
            true
        });
        result.map(|()| toxic)
    }

    /// Changes a toxic where `body` has fields (attributes one by one).
    pub fn update_toxic(&self, proxy: &str, name: &str, body: &Value) -> Result<Toxic, ChaosError> {
        let proxy = self.get(proxy)?;
        let id = self.next_toxic_id.fetch_add(1, Ordering::Relaxed);
        let mut result = Err(ChaosError::ToxicNotFound);
        proxy.toxics.send_if_modified(|list| {
            let Some(index) = list.iter().position(|t| t.toxic.name == name) else {
                return false;
            };
            match list[index].toxic.patched(body) {
                Ok(toxic) => {
                    let mut next = Vec::clone(list);
                    next[index] = Arc::new(Installed {
                        id,
                        toxic: toxic.clone(),
                    });
                    *list = Arc::new(next);
                    result = Ok(toxic);
                    true
                }
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        });
        result
    }

    /// Removes a toxic; live connections stop applying it from their next chunk.
    pub fn remove_toxic(&self, proxy: &str, name: &str) -> Result<(), ChaosError> {
        let proxy = self.get(proxy)?;
        let mut found = false;
        proxy.toxics.send_if_modified(|list| {
            found = list.iter().any(|t| t.toxic.name == name);
            if found {
                *list = Arc::new(
                    list.iter()
                        .filter(|t| t.toxic.name != name)
                        .cloned()
                        .collect(),
                );
            }
            found
        });
        if found {
            Ok(())
        } else {
            Err(ChaosError::ToxicNotFound)
        }
    }

    /// Reads a populate file (Toxiproxy's format: a JSON array of proxies) and applies it.
    pub async fn populate_file(
        &self,
        path: &std::path::Path,
    ) -> Result<Vec<ProxyInfo>, ChaosError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChaosError::Config {
            path: path.display().to_string(),
            source,
        })?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| ChaosError::BadRequest(format!("{}: {e}", path.display())))?;
        self.populate(populate_specs(&body)?)
            .await
            .map_err(|(e, _)| e)
    }
}

/// The proxies of a populate body: a JSON array, or `{"proxies": [...]}`.
pub(crate) fn populate_specs(body: &Value) -> Result<Vec<ProxySpec>, ChaosError> {
    let list = match body {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("proxies") {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(ChaosError::BadRequest(
                    "expected an array of proxies, or {\"proxies\": [...]}".into(),
                ))
            }
        },
        other => {
            return Err(ChaosError::BadRequest(format!(
                "expected an array of proxies (got {other})"
            )))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            ProxySpec::from_json(p)
                .map_err(|e| ChaosError::BadRequest(format!("proxies[{i}]: {e}")))
        })
        .collect()
}

async fn resolve(field: &'static str, address: &str) -> Result<(), ChaosError> {
    let unresolvable = |reason: String| ChaosError::Unresolvable {
        field,
        address: address.to_owned(),
        reason,
    };
    match tokio::net::lookup_host(address).await {
        Ok(mut addrs) => match addrs.next() {
            Some(_) => Ok(()),
            None => Err(unresolvable("no addresses".into())),
        },
        Err(e) => Err(unresolvable(e.to_string())),
    }
}
