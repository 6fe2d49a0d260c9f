/* hidden */ -- line
ATTACH 'x' AS y