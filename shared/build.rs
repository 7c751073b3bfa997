//! `sqlx::migrate!` embeds the migrations at compile time, and cargo does not know a new file in
//! `migrations/` concerns this crate; without this a build after adding a migration would ship
//! the old set.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
