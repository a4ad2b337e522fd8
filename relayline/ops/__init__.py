"""Operations on a relay's data: backups, their verification, restores."""
