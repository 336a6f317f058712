//! Several backends behind one [`Backend`]: each domain goes to the backend its policy chose
//! (`Domain::backend`); calls by name go where that domain lives.

use std::collections::HashMap;
use std::sync::Arc;

use dms_accounting::Usage;
use dms_policies::BackendKind;
use parking_lot::Mutex;

use crate::domain::{
    Backend, BackendError, Domain, EventSource, ExecSpec, InitExitHandler, JoinTarget, LiveDomain,
    Runtime, ZombieHandler,
};
use crate::spawn::Child;

/// Container domains plus, when configured, libvirt guests.
#[derive(Debug)]
pub struct Backends {
    container: Arc<dyn Backend>,
    guests: Option<Arc<dyn Backend>>,
    /// Which backend each known domain lives in (absent: container).
    kinds: Mutex<HashMap<String, BackendKind>>,
}

impl Backends {
    /// The container backend, and optionally a guest backend.
    pub fn new(container: Arc<dyn Backend>, guests: Option<Arc<dyn Backend>>) -> Backends {
        Backends {
            container,
            guests,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    fn of_kind(&self, kind: BackendKind) -> Result<&Arc<dyn Backend>, BackendError> {
        match kind {
            BackendKind::Container => Ok(&self.container),
            BackendKind::Libvirt => self.guests.as_ref().ok_or_else(|| {
                BackendError::Unsupported("this dmsd has no libvirt backend".into())
            }),
        }
    }

    fn of(&self, name: &str) -> &Arc<dyn Backend> {
        match (self.kinds.lock().get(name), &self.guests) {
            (Some(BackendKind::Libvirt), Some(g)) => g,
            _ => &self.container,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        std::iter::once(&self.container).chain(self.guests.iter())
    }

    fn remember(&self, d: &Domain) {
        self.kinds.lock().insert(d.name.clone(), d.backend);
    }
}

impl Backend for Backends {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }
    fn supports(&self, kind: BackendKind) -> bool {
        self.all().any(|b| b.kind() == kind)
    }
    fn create(&self, d: &mut Domain) -> Result<(), BackendError> {
        let b = Arc::clone(self.of_kind(d.backend)?);
        self.remember(d);
        b.create(d)
    }
    fn adopt(&self, d: &Domain) -> Result<(), BackendError> {
        self.remember(d);
        self.of_kind(d.backend)?.adopt(d)
    }
    fn update(&self, d: &Domain) -> Result<(), BackendError> {
        self.of_kind(d.backend)?.update(d)
    }
    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.of(name).destroy(name)?;
        self.kinds.lock().remove(name);
        Ok(())
    }
    fn freeze(&self, name: &str) -> Result<(), BackendError> {
        self.of(name).freeze(name)
    }
    fn thaw(&self, name: &str) -> Result<(), BackendError> {
        self.of(name).thaw(name)
    }
    fn save(&self, name: &str) -> Result<(), BackendError> {
        self.of(name).save(name)
    }
    fn restore(&self, d: &Domain) -> Result<(), BackendError> {
        self.of_kind(d.backend)?.restore(d)
    }
    fn attach(&self, name: &str, pid: i32) -> Result<(), BackendError> {
        self.of(name).attach(name, pid)
    }
    fn exec(&self, d: &Domain, spec: &ExecSpec, stdio: &[i32]) -> Result<Child, BackendError> {
        self.of_kind(d.backend)?.exec(d, spec, stdio)
    }
    fn join_target(&self, d: &Domain) -> Result<JoinTarget, BackendError> {
        self.of_kind(d.backend)?.join_target(d)
    }
    fn on_init_exit(&self, handler: InitExitHandler) {
        let h: Arc<InitExitHandler> = Arc::new(handler);
        for b in self.all() {
            let h = Arc::clone(&h);
            b.on_init_exit(Box::new(move |n| h(n)));
        }
    }
    fn on_zombie(&self, handler: ZombieHandler) {
        let h: Arc<ZombieHandler> = Arc::new(handler);
        for b in self.all() {
            let h = Arc::clone(&h);
            b.on_zombie(Box::new(move |n, why| h(n, why)));
        }
    }
    fn stats(&self, name: &str, runtime: &Runtime) -> Result<Usage, BackendError> {
        self.of(name).stats(name, runtime)
    }
    fn limit_counters(&self, name: &str, runtime: &Runtime) -> Result<Usage, BackendError> {
        self.of(name).limit_counters(name, runtime)
    }
    fn event_sources(&self, name: &str) -> Vec<EventSource> {
        self.of(name).event_sources(name)
    }
    fn members(&self, name: &str) -> Result<Vec<i32>, BackendError> {
        self.of(name).members(name)
    }
    fn list(&self) -> Result<Vec<LiveDomain>, BackendError> {
        let mut out = self.container.list()?;
        if let Some(g) = &self.guests {
            let guests = g.list()?;
            let mut kinds = self.kinds.lock();
            for l in &guests {
                kinds.insert(l.name.clone(), BackendKind::Libvirt);
            }
            out.extend(guests);
        }
        Ok(out)
    }
    fn list_incomplete(&self, kind: BackendKind) -> bool {
        self.all().any(|b| b.list_incomplete(kind))
    }
    fn sweep(&self) -> Result<Vec<String>, BackendError> {
        let mut out = Vec::new();
        for b in self.all() {
            out.extend(b.sweep()?);
        }
        Ok(out)
    }
    fn hypervisor_memory(&self) -> Option<u64> {
        self.guests.as_ref().and_then(|g| g.hypervisor_memory())
    }
}
