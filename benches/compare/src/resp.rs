//! A minimal Redis client (RESP2 over TCP, one command in flight per connection, no
//! pipelining): what a plain `redis` crate connection does for GET/SET/PUBLISH/SUBSCRIBE.

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

#[derive(Debug)]
#[allow(dead_code)] // printed in errors
pub enum Value {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

pub struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
            buf: Vec::with_capacity(8 * 1024),
        })
    }

    pub async fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        self.buf.clear();
        self.buf
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.buf
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&self.buf).await?;
        Ok(())
    }

    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Value> {
        self.send(args).await?;
        self.read().await
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.r.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    pub async fn read(&mut self) -> Result<Value> {
        let line = self.line().await?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        match kind {
            "+" => Ok(Value::Simple(rest.to_owned())),
            "-" => Err(anyhow!("redis error: {rest}")),
            ":" => Ok(Value::Int(rest.parse()?)),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    return Ok(Value::Bulk(None));
                }
                let mut data = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut data).await?;
                data.truncate(n as usize);
                Ok(Value::Bulk(Some(data)))
            }
            "*" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    return Ok(Value::Array(None));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(Box::pin(self.read()).await?);
                }
                Ok(Value::Array(Some(items)))
            }
            _ => bail!("bad RESP line {line:?}"),
        }
    }

    /// `INFO section` as text.
    pub async fn info(&mut self, section: &str) -> Result<String> {
        match self.cmd(&[b"INFO", section.as_bytes()]).await? {
            Value::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => bail!("INFO answered {other:?}"),
        }
    }
}

impl Value {
    /// The payload of a pub/sub `message` push.
    pub fn message_payload(self) -> Option<Vec<u8>> {
        match self {
            Value::Array(Some(mut items)) if items.len() == 3 => match items.pop() {
                Some(Value::Bulk(Some(b))) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }
}
