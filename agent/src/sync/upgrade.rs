//! The end of an upgrade across a change of map layout: once the first pass
//! has filled the new maps and every hook runs this build's programs, the
//! pins of the other layout go (see `crate::datapath::layout`).
use tracing::{info, warn};

use super::SyncLoop;
use crate::datapath::AttachReport;

impl SyncLoop {
    /// Removes the pins of the other layout once every hook runs this
    /// build's programs (an attach error keeps them for the next pass).
    pub(super) fn finish_upgrade(&mut self, attached: &AttachReport) {
        if !attached.errors.is_empty() || attached.foreign {
            return;
        }
        let maps: Vec<String> = self
            .dp
            .stale_maps()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        match self.dp.finish_upgrade() {
            Ok(removed) => info!(
                maps = ?maps,
                removed,
                "map layout upgrade done: every hook runs this agent's programs on the new maps; the old pins are removed"
            ),
            Err(e) => warn!(error = %e, "removing the pins of the previous map layout"),
        }
    }
}
