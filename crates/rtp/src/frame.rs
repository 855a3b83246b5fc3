//! [`FrameStart`]: what the first RTP packet of a video frame says about the frame, as each
//! codec module's `frame_start` reads it. A leaf module the codec modules share.

/// An RTP payload that starts a new frame, as the codec modules' `frame_start` read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStart {
    /// Whether the frame is a keyframe.
    pub keyframe: bool,
    /// A keyframe's width and height, when the packet holds them.
    pub size: Option<(u16, u16)>,
    /// The picture id, when present, and whether it is the 15-bit form.
    pub picture_id: Option<(u16, bool)>,
}
