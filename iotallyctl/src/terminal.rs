//! `watch` on a terminal (Windows): crossterm's alternate screen and key events.

use std::io::Write;
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use iotallyctl::cli::Screen;

/// `watch` on a terminal: the alternate screen, redrawn in place; `q`, Esc or Ctrl-C quits.
pub struct Terminal(std::io::Stdout);

impl Terminal {
    pub fn enter() -> std::io::Result<Self> {
        let mut out = std::io::stdout();
        terminal::enable_raw_mode()?;
        execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(Self(out))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = execute!(self.0, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

impl Screen for Terminal {
    fn show(&mut self, frame: &str) -> std::io::Result<()> {
        execute!(
            self.0,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
        // Raw mode: lines need a carriage return.
        write!(self.0, "{}", frame.replace('\n', "\r\n"))?;
        write!(self.0, "\r\nq to quit")?;
        self.0.flush()
    }

    fn wait(&mut self, interval: Duration) -> std::io::Result<bool> {
        let deadline = std::time::Instant::now() + interval;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !event::poll(left)? {
                return Ok(true);
            }
            if let Event::Key(key) = event::read()? {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || key.code == KeyCode::Char('q') || key.code == KeyCode::Esc {
                    return Ok(false);
                }
            }
        }
    }
}
