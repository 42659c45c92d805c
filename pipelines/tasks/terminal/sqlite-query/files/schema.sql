CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount INTEGER);
INSERT INTO customers VALUES (1, 'alice'), (2, 'bob');
INSERT INTO orders VALUES (1, 1, 30), (2, 2, 7), (3, 1, 12), (4, 2, 5);
