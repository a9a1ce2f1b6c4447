//! The core's one error type. Each adapter maps these onto its wire outcome
//! in one place (AMQP reply codes, MQTT reason codes, STOMP ERROR frames);
//! the AMQP code each variant corresponds to is noted for that mapping.

use junction_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// 404 NOT_FOUND: no such vhost, exchange or queue.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// 406 PRECONDITION_FAILED: redeclared with other settings, queue not
    /// empty or in use on a conditional delete, unknown delivery tag,
    /// invalid argument value.
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// 403 ACCESS_REFUSED: reserved names (`amq.*`), an exclusive consumer
    /// already holds the queue, a user without rights to the vhost.
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// 405 RESOURCE_LOCKED: an exclusive queue owned by another connection.
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    /// 503 COMMAND_INVALID: e.g. an unknown exchange type.
    #[error("COMMAND_INVALID - {0}")]
    CommandInvalid(String),
    /// 530 NOT_ALLOWED: e.g. deleting a built-in exchange, unknown vhost.
    #[error("NOT_ALLOWED - {0}")]
    NotAllowed(String),
    /// 406 PRECONDITION_FAILED in AMQP (RabbitMQ answers its vhost limits
    /// so): a configured count limit (queues, exchanges, bindings, topic
    /// levels, consumers, subscriptions) would be exceeded.
    #[error("PRECONDITION_FAILED - {0}")]
    LimitReached(String),
    /// The broker is shutting down.
    #[error("broker is shutting down")]
    ShuttingDown,
    /// 541 INTERNAL_ERROR: the cluster did not commit a change in time (no
    /// majority of nodes reachable).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// 541 INTERNAL_ERROR: the store failed.
    #[error("store failure: {0}")]
    Store(#[from] StoreError),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl CoreError {
    /// The AMQP 0-9-1 reply code for this error (other adapters use it as a
    /// common vocabulary too).
    pub fn amqp_code(&self) -> u16 {
        match self {
            CoreError::NotFound(_) => 404,
            CoreError::PreconditionFailed(_) | CoreError::LimitReached(_) => 406,
            CoreError::AccessRefused(_) => 403,
            CoreError::ResourceLocked(_) => 405,
            CoreError::CommandInvalid(_) => 503,
            CoreError::NotAllowed(_) => 530,
            CoreError::ShuttingDown => 320,
            CoreError::Store(_) | CoreError::Corrupt(_) | CoreError::Unavailable(_) => 541,
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
