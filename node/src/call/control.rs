//! Call control asked for through the API (`CallService`): hang-up, hold and resume,
//! transfers, conference, pick-up. The call task runs these between its other inputs.

use tokio::sync::oneshot;

use super::registry::{ControlError, ControlResult};
use super::Call;

/// A call-control request for one call.
#[derive(Debug)]
pub enum CallAction {
    Hangup,
}

impl Call {
    pub(super) async fn on_call_action(
        &mut self,
        action: CallAction,
        reply: oneshot::Sender<ControlResult>,
    ) {
        let result = match action {
            CallAction::Hangup => Err(ControlError::Refused(format!(
                "hang-up of call {} is not built yet",
                self.id
            ))),
        };
        reply.send(result).ok();
    }
}
