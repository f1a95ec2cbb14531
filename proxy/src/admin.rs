//! STUB
pub struct AdminState { pub shards: Vec<crate::shard::ShardHandle>, pub config_json: std::cell::RefCell<serde_json::Value>, pub draining: std::cell::Cell<bool> }
pub async fn serve(_l: tokio::net::TcpListener, _s: std::rc::Rc<AdminState>) {}
