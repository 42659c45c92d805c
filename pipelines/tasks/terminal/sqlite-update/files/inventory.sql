CREATE TABLE items (name TEXT, quantity INTEGER, expired INTEGER);
INSERT INTO items VALUES ('milk', 4, 0), ('bread', 2, 1), ('rice', 10, 0),
  ('yoghurt', 6, 1), ('sample', 1, 0);
