use serde_json::value::RawValue;
use std::time::Instant;
fn main() {
    let row = r#"{"id":"3f1c2a9e-7b1d-4c55-9a3e-1f2b3c4d5e6f","user_id":"u12","category_id":null,"title":"t1234","done":false,"priority":0,"due_date":null,"tags":[],"created_at":"2026-03-05T11:00:00.123456+00:00","updated_at":"2026-03-05T11:00:00.123456+00:00","deleted_at":null}"#;
    let n = 20000;
    let t = Instant::now();
    for _ in 0..n {
        let r = RawValue::from_string(row.to_string()).unwrap();
        std::hint::black_box(r);
    }
    println!("RawValue::from_string: {:.2} us/row", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(synchro::checksum::record_checksum(row));
    }
    println!("record_checksum: {:.2} us/row", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let recs: Vec<synchro::protocol::Record> = (0..100)
        .map(|i| synchro::protocol::Record {
            id: format!("3f1c2a9e-7b1d-4c55-9a3e-{i:012}"),
            table_name: "tasks".into(),
            bucket_id: Some("user:u12".into()),
            data: RawValue::from_string(row.to_string()).unwrap(),
            updated_at: "2026-03-05T11:00:00.123456Z".into(),
            deleted_at: None,
            checksum: Some(123456),
        })
        .collect();
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(serde_json::to_vec(&recs).unwrap());
    }
    println!("serde 100 records: {:.1} us/page", t.elapsed().as_secs_f64() * 1e6 / 200.0);
    let t = Instant::now();
    for _ in 0..200 {
        let r: Vec<synchro::protocol::Record> = recs.clone();
        std::hint::black_box(r);
    }
    println!("clone 100 records: {:.1} us/page", t.elapsed().as_secs_f64() * 1e6 / 200.0);
}
