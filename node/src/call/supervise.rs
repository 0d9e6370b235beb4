//! A supervisor on a call: silent monitor, whisper, barge and take-over, from a
//! registered SIP phone, switched mid-call.

use tokio::sync::oneshot;

use super::registry::{ControlError, ControlResult};
use super::Call;

/// A supervisor request for one call.
#[derive(Debug)]
pub enum SuperviseAction {
    Monitor { supervisor: String },
}

impl Call {
    pub(super) async fn on_supervise(
        &mut self,
        action: SuperviseAction,
        reply: oneshot::Sender<ControlResult>,
    ) {
        let result = match action {
            SuperviseAction::Monitor { supervisor } => Err(ControlError::Refused(format!(
                "monitoring call {} from {supervisor} is not built yet",
                self.id
            ))),
        };
        reply.send(result).ok();
    }
}
