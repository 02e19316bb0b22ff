//! Opening any data file zdcflow reads, by content: CaloChallenge HDF5, zdcflow ZDC HDF5, or a ZDC
//! npz pair.

use std::path::Path;

use super::calo::{self, CaloFile};
use super::h5;
use super::zdc::{self, ZdcFile};
use crate::error::{Error, Result};

pub enum DataFile {
    Calo(CaloFile),
    Zdc(ZdcFile),
}

impl DataFile {
    pub fn open(path: &Path) -> Result<Self> {
        if zdc::is_npz(path) {
            return Ok(Self::Zdc(ZdcFile::open(path)?));
        }
        let file = h5::open(path)?;
        if calo::is_calo(&file) {
            Ok(Self::Calo(CaloFile::from_file(file, path)?))
        } else if zdc::is_zdc(&file) {
            Ok(Self::Zdc(ZdcFile::from_file(file, path)?))
        } else {
            let names = file.member_names().unwrap_or_default();
            if let Some(g) = [calo::SHOWERS, calo::E_INC, zdc::RESPONSES]
                .into_iter()
                .find(|n| names.iter().any(|m| m == n) && file.group(n).is_ok())
            {
                return Err(Error::data(path, g, "is a group, expected a dataset"));
            }
            Err(Error::format(
                path,
                format!(
                    "neither a CaloChallenge file (datasets '{}' and '{}') nor a zdcflow ZDC file (dataset '{}'); it holds {names:?}",
                    calo::E_INC,
                    calo::SHOWERS,
                    zdc::RESPONSES
                ),
            ))
        }
    }

    pub fn events(&self) -> usize {
        match self {
            Self::Calo(c) => c.events,
            Self::Zdc(z) => z.events,
        }
    }
}
