from __future__ import annotations

from relayline.cli import main

if __name__ == "__main__":
    main()
