//! The transport over fltsim's communication port (feature `sim`): a simulated user process
//! connecting to the simulated driver.

use fltsim::{Caller, Input, Output, PortClient, Sim};
use windows_sys::Win32::Foundation::{
    STATUS_ACCESS_DENIED, STATUS_CONNECTION_COUNT_LIMIT, STATUS_OBJECT_NAME_NOT_FOUND,
};

use crate::transport::{Code, ConnectError, Transport};

/// A connection to `\iotally` in a [`Sim`], with the simulated machine's drive letters.
pub struct SimPort<'sim> {
    port: PortClient<'sim>,
    drives: Vec<(String, String)>,
}

impl<'sim> SimPort<'sim> {
    /// Connects as `caller`; `drives` maps drive letters (`C:`) to device names.
    ///
    /// # Errors
    /// Why the connection was refused.
    pub fn connect(
        sim: &'sim Sim,
        caller: Caller,
        drives: &[(&str, &str)],
    ) -> Result<Self, ConnectError> {
        let port = sim
            .connect_as(caller, iotally_protocol::PORT_NAME, &[])
            .map_err(|status| match status {
                STATUS_OBJECT_NAME_NOT_FOUND => ConnectError::NotLoaded,
                STATUS_ACCESS_DENIED => ConnectError::AccessDenied,
                STATUS_CONNECTION_COUNT_LIMIT => ConnectError::Busy,
                other => ConnectError::Other(Code::NtStatus(other)),
            })?;
        Ok(Self {
            port,
            drives: drives
                .iter()
                .map(|(d, v)| ((*d).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    /// Disconnects.
    pub fn close(self) {
        self.port.close();
    }
}

impl Transport for SimPort<'_> {
    fn send(&mut self, request: &[u8], reply: &mut [u8]) -> Result<(), Code> {
        let capacity = u32::try_from(reply.len()).unwrap_or(u32::MAX);
        let answer = self
            .port
            .message(Input::Bytes(request), Output::Buffer(capacity));
        let n = answer.buffer.len().min(reply.len());
        reply[..n].copy_from_slice(&answer.buffer[..n]);
        if answer.status < 0 {
            Err(Code::NtStatus(answer.status))
        } else {
            Ok(())
        }
    }

    fn device_of(&self, drive: &str) -> Option<String> {
        self.drives
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(drive))
            .map(|(_, v)| v.clone())
    }

    fn drives(&self) -> Vec<(String, String)> {
        self.drives.clone()
    }
}
