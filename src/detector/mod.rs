//! What training and sampling of one detector both build, in one place each: the ZDC flow's
//! conditions ([`zdc`]), iCaloFlow's Flow-2/Flow-3 contexts and layer patterns ([`calo`]), and
//! the per-event noise streams of generation ([`noise`]; the photon-sum flow's test report
//! samples with them too).
//! Training ([`crate::models`]) builds them on the host for rows of a file; sampling
//! ([`crate::sample`]) builds the same values as tensors from what it just generated, and the
//! tests here check that the two agree.

pub mod calo;
pub mod noise;
pub mod zdc;
