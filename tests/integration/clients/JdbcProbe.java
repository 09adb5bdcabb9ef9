// Connects through a pgaurora endpoint with the PostgreSQL JDBC driver; prints what the server says.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.Statement;

public class JdbcProbe {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        String write = args.length > 1 ? args[1] : null;
        try (Connection conn = DriverManager.getConnection(url, System.getenv().getOrDefault("PGUSER", "postgres"), System.getenv("PGPASSWORD"));
             Statement st = conn.createStatement()) {
            if (write != null) {
                st.executeUpdate(write);
            }
            try (ResultSet rs = st.executeQuery("SELECT pg_is_in_recovery(), host(inet_server_addr())")) {
                rs.next();
                System.out.println(rs.getBoolean(1) + " " + rs.getString(2));
            }
        }
    }
}
