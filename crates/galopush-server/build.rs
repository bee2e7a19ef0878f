//! Compiles `proto/link.proto` (the router <-> comet link) with protox, a pure-Rust protobuf
//! compiler, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/link.proto");
    let descriptors = protox::compile(["proto/link.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Bodies decode as slices of the received buffer, shared by the deliveries naming them.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
