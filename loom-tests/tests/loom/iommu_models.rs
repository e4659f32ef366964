//! (models for this area are added here)
