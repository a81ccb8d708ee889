//! Where tasks send their events. The server implements [`EventSink`] with its webhook
//! delivery; tests collect events in memory.

use std::sync::Arc;
use tessera_model::events::{EventInfo, TaskEvent};
use tessera_model::{AppId, RoomId};

/// Takes events; must not block (it is called from worker threads too).
pub trait EventSink: Send + Sync {
    fn emit(&self, app: &AppId, code: u16, info: EventInfo);
}

/// A cloneable handle on the process's event sink.
#[derive(Clone)]
pub struct Events(Arc<dyn EventSink>);

impl Events {
    pub fn new(sink: Arc<dyn EventSink>) -> Events {
        Events(sink)
    }

    /// Events that go nowhere (tools, tests that do not look).
    pub fn discard() -> Events {
        struct Discard;
        impl EventSink for Discard {
            fn emit(&self, _: &AppId, _: u16, _: EventInfo) {}
        }
        Events(Arc::new(Discard))
    }

    pub fn emit(&self, app: &AppId, code: u16, info: EventInfo) {
        self.0.emit(app, code, info);
    }

    /// A task's event: its room, its server user (`rec_<id>`, `mix_<id>`, …) and its id.
    pub fn task(&self, app: &AppId, room: &RoomId, user: String, task_id: &str, event: TaskEvent) {
        let code = event.code();
        self.0.emit(app, code, event.into_info(EventInfo::task(room.as_str(), user, task_id)));
    }
}
