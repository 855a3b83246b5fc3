//! [`Role`]: what a bot does in a call, a leaf type the bots, the live metrics and the report
//! share.

/// Publisher (publishes and subscribes) or subscriber (receive only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes audio/video and receives everyone else.
    Publisher,
    /// Receives only.
    Subscriber,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        }
    }
}
